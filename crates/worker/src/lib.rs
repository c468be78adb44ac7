//! comfy-remote-worker (placeholder).
