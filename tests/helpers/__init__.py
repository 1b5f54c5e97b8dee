"""Code the tests share (not tests themselves): import as `from helpers.videos import ...`.

tests/ is on sys.path because pytest imports tests/conftest.py in its default (prepend) import mode;
a test file run as a script, or a benchmark, puts tests/ on sys.path itself.

- videos: real encoded test videos (OpenCV) and manifest/UCF-101-layout datasets of them;
- toy_store: `build_toy_store`, a learnable toy feature store (videos, classes, frame_features);
- servers: `serve` (a server in its own process session, polled until healthy, killed at the end),
  `free_port`, `session_pids`, `kill_session`.
"""
