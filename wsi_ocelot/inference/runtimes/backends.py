"""Sessions of the exported graphs in OpenVINO or ONNX Runtime: numpy in, numpy out, on the
CPU, with an explicit thread count (docs/runtimes.md)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from wsi_ocelot.errors import WsiOcelotError

if TYPE_CHECKING:
    import openvino as ov

__all__ = ["Backend", "OnnxRuntimeBackend", "OpenVinoBackend", "open_backend", "require_runtime"]


class Backend(Protocol):
    """A loaded runtime: the tissue graph and the cell graph of ``graphs.py``."""

    runtime: str
    precision: str

    def tissue(self, x: np.ndarray) -> np.ndarray: ...

    def cell(self, cell: np.ndarray, injection: np.ndarray | None) -> np.ndarray: ...


def require_runtime(runtime: str) -> None:
    """Import ``runtime`` or raise the one-line error that names the fix."""
    try:
        if runtime == "openvino":
            import openvino  # noqa: F401
        elif runtime == "onnxruntime":
            import onnxruntime  # noqa: F401
    except ImportError as err:
        raise WsiOcelotError(
            None,
            f"--runtime {runtime} asked for, but {runtime} does not import here ({err})",
            f"pip install {runtime} (wsi-ocelot's install brings it), or use --runtime auto",
        ) from err


def _feed(cell: np.ndarray, injection: np.ndarray | None) -> dict[str, np.ndarray]:
    feed = {"cell": np.ascontiguousarray(cell, dtype=np.float32)}
    if injection is not None:
        feed["injection"] = np.ascontiguousarray(injection, dtype=np.float32)
    return feed


class OnnxRuntimeBackend:
    """ONNX Runtime's CPU execution provider over ``tissue.onnx`` / ``cell.onnx`` (or their int8 forms)."""

    runtime = "onnxruntime"

    def __init__(self, graphs: dict[str, Path], precision: str, threads: int):
        import onnxruntime as ort

        self.precision = precision
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._sessions = {
            name: ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            for name, path in graphs.items()
        }

    def tissue(self, x: np.ndarray) -> np.ndarray:
        return self._sessions["tissue"].run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})[
            0
        ]

    def cell(self, cell: np.ndarray, injection: np.ndarray | None) -> np.ndarray:
        return self._sessions["cell"].run(None, _feed(cell, injection))[0]


class OpenVinoBackend:
    """OpenVINO's CPU plugin over the same ONNX files: ``fp32`` and ``bf16`` as the cell graph's
    inference precision hint, ``int8`` by running the quantised (QDQ) cell graph, whose float parts
    run in ``int8_float`` (``bf16`` or ``fp32``, the default) as the gate chose on a bf16
    CPU. The tissue graph runs fp32 on every path.

    Compiled for throughput: a batch goes out as one request per tile over the plugin's streams
    (on 2 cores, 2 streams of one thread each), which measured 1.1× (fp32) to 1.3× (int8) faster
    per tile than one 2-thread request for the whole batch of 8 on a 2-core AMD EPYC (AVX2)."""

    runtime = "openvino"

    def __init__(
        self,
        graphs: dict[str, Path],
        precision: str,
        threads: int,
        int8_float: str | None = None,
    ):
        import openvino as ov

        self.precision = precision
        core = ov.Core()
        # the tissue graph runs fp32 on every path (docs/runtimes.md); the cell graph at the
        # precision, an int8 graph's float parts as the gate chose (``int8_float``)
        cell_float = int8_float if precision == "int8" else precision
        hints = {
            name: "bf16" if name == "cell" and cell_float == "bf16" else "f32" for name in graphs
        }

        def config(name: str) -> dict[str, str | int]:
            return {
                "INFERENCE_PRECISION_HINT": hints[name],
                "INFERENCE_NUM_THREADS": threads,
                "PERFORMANCE_HINT": "THROUGHPUT",
            }

        self._compiled = {
            name: core.compile_model(str(path), "CPU", config(name))
            for name, path in graphs.items()
        }
        self._queues = {}
        for name, compiled in self._compiled.items():
            n = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
            self._queues[name] = ov.AsyncInferQueue(compiled, n)

    def _run(self, name: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        """One request per tile; the inputs are handed over without a copy (they outlive the
        requests: ``wait_all`` returns first) and each tile's output is copied once, straight
        into the batch's array."""
        queue = self._queues[name]
        batch = next(iter(feed.values())).shape[0]
        out: list[np.ndarray] = []
        lock = threading.Lock()

        def done(request: ov.InferRequest, index: int) -> None:
            data = request.get_output_tensor(0).data
            with lock:
                if not out:
                    out.append(np.empty((batch, *data.shape[1:]), dtype=data.dtype))
            out[0][index] = data[0]

        queue.set_callback(done)
        for i in range(batch):
            queue.start_async({k: v[i : i + 1] for k, v in feed.items()}, i, share_inputs=True)
        queue.wait_all()
        return out[0]

    def tissue(self, x: np.ndarray) -> np.ndarray:
        return self._run("tissue", {"x": np.ascontiguousarray(x, dtype=np.float32)})

    def cell(self, cell: np.ndarray, injection: np.ndarray | None) -> np.ndarray:
        return self._run("cell", _feed(cell, injection))


def open_backend(
    runtime: str,
    precision: str,
    graphs: dict[str, Path],
    threads: int,
    int8_float: str | None = None,
) -> Backend:
    """Load the graphs (``{"tissue": path, "cell": path}``) in ``runtime`` at ``precision``
    (``int8_float``: OpenVINO int8 only, see ``OpenVinoBackend``)."""
    if runtime == "openvino":
        return OpenVinoBackend(graphs, precision, threads, int8_float)
    if runtime == "onnxruntime":
        return OnnxRuntimeBackend(graphs, precision, threads)
    raise ValueError(f"no exported-graph backend for runtime {runtime!r}")
