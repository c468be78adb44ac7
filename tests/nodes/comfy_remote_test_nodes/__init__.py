"""Test-only ComfyUI nodes for comfy-remote's own tests (weight-free, CPU). Never install them elsewhere.

- ``CRTestSlow``: passes an image through after ``steps`` steps of
  ``seconds_per_step`` each; every step reports progress with a small preview
  through ComfyUI's progress bar hook (the path samplers use) or, with
  ``progress_api`` set to ``set_progress``, through the V3 API's
  ``execution.set_progress`` (which ComfyUI reports only in
  ``progress_state``), and honours an interrupt within ~10 ms. With ``CR_TEST_NODES_TRACE=/path`` set in
  ComfyUI's environment it appends ``{"step": k, "t": <unix time>}`` lines to
  that file just before reporting step ``k`` (the benchmark's clock).
- ``CRTestFail``: raises a clear error when ``fail`` is true, else passes the
  image through.

The test harness links this directory into each test ComfyUI's
``custom_nodes`` (``tests/harness.comfy_home``).
"""

from __future__ import annotations

import json
import os
import time

from comfy_api.latest import ComfyExtension, io

CATEGORY = "comfy-remote/tests"
TRACE_ENV = "CR_TEST_NODES_TRACE"
# How often an interrupt (Cancel) is checked while a step sleeps.
INTERRUPT_CHECK_S = 0.01


def _preview(image, step: int):
    """A 16x16 JPEG preview of the image, tinted by the step (so each differs)."""
    from PIL import Image

    first = image[0].clamp(0, 1)
    pixels = (first * 255).round().byte().cpu().numpy()
    img = Image.fromarray(pixels).convert("RGB").resize((16, 16))
    img.putpixel((0, 0), (step % 256, 0, 0))
    return ("JPEG", img, 16)


def _trace(step: int) -> None:
    path = os.environ.get(TRACE_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "t": time.time()}) + "\n")


class CRTestSlow(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CRTestSlow",
            display_name="CR Test Slow (test only)",
            category=CATEGORY,
            description="Test only: passes the image through after `steps` steps, reporting progress and previews.",
            inputs=[
                io.Image.Input("image"),
                io.Int.Input("steps", default=4, min=0, max=100_000),
                io.Float.Input("seconds_per_step", default=0.05, min=0.0, max=3600.0, step=0.001),
                io.Combo.Input("progress_api", options=["hook", "set_progress"], default="hook", optional=True),
            ],
            hidden=[io.Hidden.unique_id],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, image, steps: int, seconds_per_step: float, progress_api: str = "hook") -> io.NodeOutput:
        import comfy.model_management
        import comfy.utils

        if progress_api == "set_progress":
            from comfy_api.latest import ComfyAPISync

            api = ComfyAPISync()
            node_id = cls.hidden.unique_id

            def report(k: int, preview) -> None:
                api.execution.set_progress(value=k, max_value=steps, node_id=node_id, preview_image=preview[1])
        else:
            bar = comfy.utils.ProgressBar(steps)

            def report(k: int, preview) -> None:
                bar.update_absolute(k, steps, preview)

        for k in range(1, steps + 1):
            end = time.monotonic() + seconds_per_step
            while True:
                comfy.model_management.throw_exception_if_processing_interrupted()
                left = end - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(left, INTERRUPT_CHECK_S))
            _trace(k)
            report(k, _preview(image, k))
        return io.NodeOutput(image.clone())


class CRTestFail(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CRTestFail",
            display_name="CR Test Fail (test only)",
            category=CATEGORY,
            description="Test only: raises an error when `fail` is true, else passes the image through.",
            inputs=[io.Image.Input("image"), io.Boolean.Input("fail", default=True)],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, image, fail: bool) -> io.NodeOutput:
        if fail:
            raise RuntimeError("CRTestFail: failing on request (its `fail` input is true)")
        return io.NodeOutput(image)


class CRTestExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [CRTestSlow, CRTestFail]


async def comfy_entrypoint() -> ComfyExtension:
    return CRTestExtension()
