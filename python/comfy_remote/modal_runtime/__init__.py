"""The code a deployed comfy-remote app runs on Modal (imported only inside its containers and by tests).

- ``backend``: the tiny interface to Modal's primitives (spawn, poll, result,
  cancel, and a key-value store), so everything else runs without Modal;
- ``modal_backend``: that interface over ``Function.spawn``,
  ``FunctionCall.from_id``, and ``modal.Dict``;
- ``local``: an in-process stand-in (threads + a dict) for tests and trials;
- ``gpu``: the GPU container: purge a preloaded ``utils``, start
  ``comfy-remote serve`` (which starts ComfyUI), run one job per call and
  mirror its progress into the store;
- ``web``: the CPU web front speaking protocol v1 over any backend.
"""
