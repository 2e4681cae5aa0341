"""The default target's own weights written into a heavier GGUF (Q8_0 or F16) with the `gguf` package: the same
model, giving nearly the same answers, at about 1.6× (Q8_0) or 3× (F16) the bytes a decode reads — the cost-ratio
study's stand-in for a bigger target on a laptop. Written under models/ (git-ignored); never shipped.

    python scripts/make_heavier_target.py --type f16      # -> models/qwen2.5-coder-1.5b-instruct-f16.gguf
    specguard-local bench --target models/qwen2.5-coder-1.5b-instruct-f16.gguf \
        --profile models/qwen2.5-coder-1.5b-instruct-f16.profile.json --methods target,draft,specguard ...

Every quantized matrix is dequantized (`gguf.quants.dequantize`) and written as F16, or re-quantized to Q8_0
(`gguf.quants.quantize`); F32 tensors (norms, biases) are copied as they are; all metadata is copied, with
`general.file_type` set to the new type. Beside it goes a calibration profile for the new pair: the shipped one
with the target renamed, since its bounds and τ are the draft's own signals and the target is the same weights.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, Keys, LlamaFileType
from gguf.quants import dequantize, quantize
from tqdm import tqdm

from specguard_local import models
from specguard_local.verify.signals import default_profile

TYPES = {"f16": (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
         "q8_0": (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0)}
KEEP = (GGMLQuantizationType.F32, GGMLQuantizationType.F16)


def convert(src: Path, dst: Path, kind: str) -> None:
    tensor_type, file_type = TYPES[kind]
    reader = GGUFReader(src)
    arch = reader.fields[Keys.General.ARCHITECTURE].contents()
    writer = GGUFWriter(dst, arch)
    for field in reader.fields.values():
        if field.name == Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == GGUFValueType.ARRAY else None
        value = int(file_type) if field.name == Keys.General.FILE_TYPE else field.contents()
        writer.add_key_value(field.name, value, value_type, sub_type=sub_type)
    for tensor in tqdm(reader.tensors, desc=f"to {kind}"):
        if tensor.tensor_type in KEEP or len(tensor.shape) < 2:
            writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=tensor.tensor_type)
            continue
        weights = dequantize(tensor.data, tensor.tensor_type)
        if kind == "f16":
            writer.add_tensor(tensor.name, weights.astype(np.float16))
        else:
            writer.add_tensor(tensor.name, quantize(weights, tensor_type), raw_dtype=tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--type", choices=sorted(TYPES), default="f16")
    parser.add_argument("--source", default=models.DEFAULT_TARGET, help="preset name or .gguf path")
    parser.add_argument("--out", help="output path [default: models/<source stem with the type>.gguf]")
    args = parser.parse_args()
    src = models.resolve(args.source, None)
    dst = Path(args.out) if args.out else src.with_name(src.stem.replace("q4_k_m", args.type) + ".gguf")
    if dst == src:
        dst = src.with_name(f"{src.stem}-{args.type}.gguf")
    convert(src, dst, args.type)
    profile = default_profile()
    note = f"the shipped profile with the target renamed (the same weights as {src.name}, written as {args.type})"
    replace(profile, target=models.model_id(dst), notes={**profile.notes, "heavier_target": note}).save(
        dst.with_suffix(".profile.json"))
    print(dst)


if __name__ == "__main__":
    main()
