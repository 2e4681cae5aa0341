"""`specguard-local serve`: an OpenAI-compatible HTTP server on the loaded pair (chat: the protocol, jobs: admission
and decoding threads, app: routes and the uvicorn server). Concurrent requests decode together (`batching`)."""
