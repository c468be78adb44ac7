//! comfy-remote-client (placeholder).
