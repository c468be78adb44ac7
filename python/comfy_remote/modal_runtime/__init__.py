"""The code a deployed comfy-remote app runs on Modal (imported only inside its containers and by tests).

- ``backend``: the tiny interface to Modal's primitives (spawn, poll, result,
  cancel, a key-value store of JSON text with doorbells), so everything else
  runs without Modal;
- ``modal_backend``: that interface over ``Function.spawn``,
  ``FunctionCall.from_id``, ``modal.Dict`` and ``modal.Queue``;
- ``local``: an in-process stand-in (threads, a dict, a condition variable)
  for tests and trials;
- ``state``: a job's numbered records in the store and the SSE event ids
  derived from them;
- ``gpu``: the GPU container: purge a preloaded ``utils``, start
  ``comfy-remote serve`` (which starts ComfyUI), run one job per call through
  the native client and write each change of it into the store;
- ``web``: the CPU web front speaking protocol v1 over any backend, with the
  protocol's rules from the native module.
"""
