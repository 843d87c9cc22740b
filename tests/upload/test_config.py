"""Settings come from QA_* variables, read when first asked for (not at import)."""

from __future__ import annotations

import pytest

from upload_service.core.config import Settings, get_settings


def test_settings_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("QA_BUCKET", "b1")
    monkeypatch.setenv("QA_INCOMING_PREFIX", "/in")
    monkeypatch.setenv("QA_API_TOKEN", "t0k")
    monkeypatch.setenv("QA_MAX_UPLOAD_BYTES", "123")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "localhost:4443")
    monkeypatch.delenv("QA_GCS_URL", raising=False)
    settings = Settings()
    assert (settings.bucket, settings.incoming_prefix, settings.max_upload_bytes) == ("b1", "in/", 123)
    assert settings.api_token.get_secret_value() == "t0k" and "t0k" not in repr(settings)
    assert settings.gcs_url == "http://localhost:4443"
    monkeypatch.setenv("QA_GCS_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("QA_API_TOKEN", "")
    settings = Settings()
    assert settings.gcs_url == "http://127.0.0.1:9" and settings.api_token is None


def test_defaults_match_the_pipeline(monkeypatch):
    from beam_qa.options import QaOptions
    for name in ("QA_BUCKET", "QA_INCOMING_PREFIX", "QA_API_TOKEN", "QA_GCS_URL", "STORAGE_EMULATOR_HOST",
                 "QA_MAX_UPLOAD_BYTES", "QA_MAX_ROWS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    options = QaOptions(["--input_pattern=x/*.csv"])
    assert settings.max_upload_bytes == options.max_file_bytes
    assert settings.max_rows == options.max_rows
    assert settings.incoming_prefix == options.incoming_prefix
    assert settings.gcs_url is None and settings.api_token is None


def test_bad_settings_are_refused(monkeypatch):
    monkeypatch.setenv("QA_MAX_ROWS", "0")
    with pytest.raises(ValueError):
        Settings()


def test_get_settings_is_cached_and_lazy(monkeypatch):
    get_settings.cache_clear()
    monkeypatch.setenv("QA_BUCKET", "lazy")
    try:
        assert get_settings() is get_settings()
        assert get_settings().bucket == "lazy"
    finally:
        get_settings.cache_clear()


def test_on_cloud_run_the_default_limit_fits_under_its_32_mib_request_cap(monkeypatch, caplog):
    from upload_service.core.config import CLOUD_RUN_MAX_UPLOAD_BYTES, MULTIPART_OVERHEAD_BYTES
    from upload_service.main import _warn_about_cloud_run_limit  # pylint: disable=protected-access
    monkeypatch.delenv("QA_MAX_UPLOAD_BYTES", raising=False)
    monkeypatch.delenv("K_SERVICE", raising=False)
    assert Settings().max_upload_bytes == 50 * 2**20
    monkeypatch.setenv("K_SERVICE", "beam-qa-upload")
    assert Settings().max_upload_bytes == CLOUD_RUN_MAX_UPLOAD_BYTES == 32 * 2**20 - MULTIPART_OVERHEAD_BYTES
    monkeypatch.setenv("QA_MAX_UPLOAD_BYTES", str(50 * 2**20))
    assert Settings().max_upload_bytes == 50 * 2**20  # an explicit value wins, with a warning at start-up
    with caplog.at_level("WARNING"):
        _warn_about_cloud_run_limit(Settings().max_upload_bytes)
        _warn_about_cloud_run_limit(CLOUD_RUN_MAX_UPLOAD_BYTES)
    assert len(caplog.records) == 1 and "Cloud Run" in caplog.records[0].getMessage()


def test_log_settings(monkeypatch):
    monkeypatch.setenv("QA_LOG_FORMAT", "JSON")
    monkeypatch.setenv("QA_LOG_LEVEL", "debug")
    settings = Settings()
    assert (settings.log_format, settings.log_level) == ("json", "DEBUG")
    monkeypatch.setenv("QA_LOG_FORMAT", "xml")
    with pytest.raises(ValueError):
        Settings()


def test_the_served_app_refuses_bad_settings_with_one_line(monkeypatch, capsys):
    from upload_service.__main__ import main
    get_settings.cache_clear()
    monkeypatch.setenv("QA_LOG_FORMAT", "xml")
    try:
        assert main(["--port", "1"]) == 2
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: invalid settings: QA_LOG_FORMAT")
