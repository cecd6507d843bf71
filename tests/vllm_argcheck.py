"""Parse `vllm serve` command lines with vLLM's own argument parser: the one `vllm serve` builds
(ServeSubcommand.subparser_init, the same in vLLM 0.32 and 0.33), then its own validation.

Run as a script (importing vLLM stays out of the test process; vLLM logs to stdout, so the
results go to a file):
    python tests/vllm_argcheck.py results.json < commands.json
stdin: a JSON list of argv lists ("vllm", "serve", ...; leading NAME=value environment
assignments allowed). results.json: a JSON list with, per command, {"ok": bool, "error": str,
"env_unknown": [names vLLM does not read], "args": {field: parsed value}}.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys

FIELDS = ("model_tag", "host", "port", "served_model_name", "dtype", "max_model_len", "enforce_eager",
          "generation_config", "tensor_parallel_size", "pipeline_parallel_size", "gpu_memory_utilization",
          "nnodes", "node_rank", "master_addr", "headless", "data_parallel_size", "chat_template",
          "structured_outputs_config", "kv_cache_memory_bytes")


def _plain(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    backend = getattr(value, "backend", None)  # StructuredOutputsConfig
    return {"backend": backend} if backend is not None else str(value)


def main() -> None:
    import vllm.envs as envs
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    serve = ServeSubcommand()
    top = FlexibleArgumentParser(prog="vllm")
    serve.subparser_init(top.add_subparsers(dest="subparser"))
    results = []
    for argv in json.load(sys.stdin):
        argv = list(argv)
        env = []
        while argv and "=" in argv[0] and not argv[0].startswith("-"):
            env.append(argv.pop(0).split("=", 1)[0])
        result = {"ok": False, "error": "", "env_unknown": [e for e in env if e not in envs.environment_variables],
                  "args": {}}
        errors = io.StringIO()
        try:
            if len(argv) < 2 or not argv[0].endswith("vllm") or argv[1] != "serve":
                raise ValueError(f"not a `vllm serve` command: {argv[:2]}")
            with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(errors):
                args = top.parse_args(argv[1:])
            serve.validate(args)  # vLLM's own checks before loading (chat template, ...)
            AsyncEngineArgs.from_cli_args(args)
            result["args"] = {f: _plain(getattr(args, f, None)) for f in FIELDS}
            result["ok"] = not result["env_unknown"]
        except SystemExit:
            result["error"] = errors.getvalue().strip().splitlines()[-1:] or ["argparse exited"]
            result["error"] = result["error"][0][-500:]
        except Exception as exc:  # noqa: BLE001 - reported per command
            result["error"] = f"{type(exc).__name__}: {exc}"[-500:]
        results.append(result)
    with open(sys.argv[1], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
