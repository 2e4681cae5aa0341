/* The attention capture's eval-callback filter, in C.

llama.cpp's scheduler asks its eval callback about every node of every graph it computes ("do you want this
tensor?"), ~800 times per decode of the 0.5B draft. Answered in Python, each question costs a ctypes round trip
(about 2-3% of a draft token in all). This filter answers them here by comparing the tensor's name with the
wanted names, and calls the Python callback (`inner`) only for the wanted tensors, once their data is ready.
`attention.Capture` fills `sg_filter` (its ctypes twin is `attention._Filter`); the module's `address` is the
filter function's address, for llama.cpp's `cb_eval`. No ggml header is needed: the tensor's name comes from
ggml's own `ggml_get_name`, whose address the caller passes in. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#define SG_MAX_NAMES 128
#define SG_NAME_LEN 64

typedef bool (*sg_eval_cb)(void *tensor, bool ask, void *user_data);
typedef const char *(*sg_get_name)(const void *tensor);

typedef struct {
    sg_eval_cb inner;       /* the Python callback: called with ask = false for wanted tensors only */
    sg_get_name get_name;   /* ggml_get_name */
    int32_t n_names;
    char names[SG_MAX_NAMES][SG_NAME_LEN];
} sg_filter;

static bool sg_filter_eval(void *tensor, bool ask, void *user_data) {
    const sg_filter *filter = (const sg_filter *)user_data;
    const char *name = filter->get_name(tensor);
    for (int32_t i = 0; i < filter->n_names; i++) {
        if (strncmp(name, filter->names[i], SG_NAME_LEN) == 0) {
            return ask ? true : filter->inner(tensor, false, NULL);
        }
    }
    return !ask; /* not wanted: no when asked (and a computed tensor nobody wanted never comes here) */
}

static struct PyModuleDef sg_module = {PyModuleDef_HEAD_INIT, "_evalfilter", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__evalfilter(void) {
    PyObject *module = PyModule_Create(&sg_module);
    if (module == NULL) return NULL;
    if (PyModule_AddObject(module, "address", PyLong_FromVoidPtr((void *)sg_filter_eval)) < 0 ||
        PyModule_AddIntConstant(module, "MAX_NAMES", SG_MAX_NAMES) < 0 ||
        PyModule_AddIntConstant(module, "NAME_LEN", SG_NAME_LEN) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
