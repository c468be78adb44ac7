"""The backend over Modal's primitives: ``Function.spawn``, ``FunctionCall.from_id``, ``modal.Dict``."""

from __future__ import annotations

from typing import Any

import modal
import modal.exception

from comfy_remote.modal_runtime.backend import CallState


class ModalStore:
    """A ``modal.Dict`` (created on first use) as the job store."""

    def __init__(self, name: str) -> None:
        self._dict = modal.Dict.from_name(name, create_if_missing=True)

    async def get(self, key: str) -> Any | None:
        return await self._dict.get.aio(key)

    async def put(self, key: str, value: Any) -> None:
        await self._dict.put.aio(key, value)

    async def put_if_absent(self, key: str, value: Any) -> bool:
        return bool(await self._dict.put.aio(key, value, skip_if_exists=True))


class ModalBackend:
    """Jobs are calls of the GPU class's ``run_job`` method; their state is Modal's."""

    def __init__(self, run_job: Any, dict_name: str) -> None:
        self._run_job = run_job
        self.store = ModalStore(dict_name)

    async def spawn(self, job_id: str, body: bytes, content_type: str) -> str:
        # Arguments over a few KiB go through Modal's blob store by themselves.
        call = await self._run_job.spawn.aio(job_id, body, content_type)
        return str(call.object_id)

    async def poll(self, call_id: str) -> CallState:
        call = modal.FunctionCall.from_id(call_id)
        try:
            await call.get.aio(timeout=0)
        except modal.exception.OutputExpiredError:
            return CallState("expired")
        except modal.exception.FunctionTimeoutError as e:
            return CallState("failed", f"the job exceeded the deployment's timeout: {e}")
        except (modal.exception.TimeoutError, TimeoutError):
            return CallState("running")
        except modal.exception.InputCancellation:
            return CallState("canceled")
        except Exception as e:  # noqa: BLE001 - the call's own failure is the answer
            if type(e).__name__ == "JobCanceled" or "cancel" in str(e).lower():
                return CallState("canceled")
            return CallState("failed", str(e) or type(e).__name__)
        return CallState("succeeded")

    async def result(self, call_id: str, timeout: float) -> bytes:
        return bytes(await modal.FunctionCall.from_id(call_id).get.aio(timeout=timeout))

    async def cancel(self, call_id: str) -> None:
        await modal.FunctionCall.from_id(call_id).cancel.aio()
