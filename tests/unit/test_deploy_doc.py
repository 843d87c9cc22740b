"""docs/deploy.md uses the repository's files as they are: no extraction step, each image for its part."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GUIDE = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
COMMANDS = "\n".join(re.findall(r"```sh\n(.*?)```", GUIDE, re.S))


def test_the_template_is_built_from_the_metadata_file_itself():
    builds = re.findall(r"gcloud dataflow flex-template build .*?(?=\n\n|\Z)", COMMANDS, re.S)
    assert builds and all("--metadata-file=flex_template.json" in build for build in builds)
    assert "flex_template.json" not in COMMANDS.replace("--metadata-file=flex_template.json", ""), (
        "flex_template.json is read or rewritten somewhere other than --metadata-file")


def test_every_file_the_commands_name_exists():
    for name in set(re.findall(r"(?:-f |--config-from-file=|--metadata-file=)(\S+)", COMMANDS)):
        assert (REPO / name).is_file(), name


def test_each_image_is_built_from_its_own_dockerfile_and_cloud_run_runs_the_upload_image():
    assert re.search(r'docker build -f Dockerfile\.worker -t "\$IMAGE" --build-arg WORKER_IMAGE="\$IMAGE"', COMMANDS)
    assert re.search(r'docker build -f Dockerfile\.worker -t "\$GPU_IMAGE" --build-arg WORKER_IMAGE="\$GPU_IMAGE"',
                     COMMANDS)
    assert 'docker build -f Dockerfile.upload -t "$UPLOAD_IMAGE"' in COMMANDS
    deploy = re.search(r"gcloud run deploy .*?(?=\n\n|\Z)", COMMANDS, re.S).group(0)
    assert '--image="$UPLOAD_IMAGE"' in deploy and "--command" not in deploy


def test_no_dead_letter_policy_on_the_dataflow_subscription():
    assert "--dead-letter-topic" not in COMMANDS and "--max-delivery-attempts" not in COMMANDS
    assert "https://cloud.google.com/pubsub/docs/handling-failures" in GUIDE


def test_the_gpu_build_asks_for_the_cuda_build_the_guide_documents():
    assert "--build-arg TORCH_INDEX_URL=https://pypi.org/simple --build-arg TORCH_CUDA=13.0" in COMMANDS
    assert "CUDA 13.0" in GUIDE and "580.65.06" in GUIDE
    assert "install-nvidia-driver:latest" in COMMANDS and "disk_size_gb=" in COMMANDS
    assert "no_use_multiple_sdk_containers" in COMMANDS
