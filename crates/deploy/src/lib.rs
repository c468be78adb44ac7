//! comfy-remote-deploy (placeholder).
