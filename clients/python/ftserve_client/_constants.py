import httpx

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
# Uploads and training-sized requests can take a while; connecting should not.
DEFAULT_TIMEOUT = httpx.Timeout(timeout=600.0, connect=5.0)
DEFAULT_MAX_RETRIES = 2
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
# A server asking for a longer pause than this is not worth waiting on inside one call.
MAX_RETRY_AFTER = 60.0
UPLOAD_CHUNK_BYTES = 256 * 1024
