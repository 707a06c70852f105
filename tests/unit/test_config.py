from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config import DEFAULT_CONFIG, Settings, TokenSpec, load_settings
from app.errors import ConfigError


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "weft.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_defaults_match_the_spec() -> None:
    settings = Settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 3060
    assert settings.data_dir == Path("./data")
    assert settings.tokens == ()
    assert settings.tail_timeout == 0
    assert settings.abandon_after == 600
    assert settings.durability.fsync in ("always", "interval", "never")
    assert settings.limits.metadata_bytes == 16 * 1024
    assert settings.limits.stream_bytes is None
    assert settings.limits.header_bytes >= 16 * 1024
    assert settings.http.header_timeout == 30
    assert settings.http.send_timeout == 300
    assert settings.resolved_database_url.startswith("sqlite")
    assert "data" in settings.resolved_database_url


def test_repository_config_yaml_equals_the_model_defaults() -> None:
    assert DEFAULT_CONFIG.name == "config.yaml" and DEFAULT_CONFIG.exists()
    assert load_settings(DEFAULT_CONFIG, environ={}) == Settings()
    # No path: the repository's file is read.
    assert load_settings(None, environ={}) == Settings()


def test_every_key_in_repository_config_yaml_is_a_real_key() -> None:
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())

    def walk(data: dict[str, Any], model: type[Any], prefix: str) -> None:
        for key, value in data.items():
            assert key in model.model_fields, f"{prefix}{key} is not a setting"
            annotation = model.model_fields[key].annotation
            if isinstance(value, dict):
                walk(value, annotation, f"{prefix}{key}.")

    walk(raw, Settings, "")
    # The file documents every setting, nested ones included.
    assert set(raw) == set(Settings.model_fields)
    for section in ("durability", "limits", "http", "retention"):
        assert set(raw[section]) == set(type(getattr(Settings(), section)).model_fields)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, ""), environ={}) == Settings()


def test_yaml_file_values_are_loaded(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "host": "0.0.0.0",
            "port": 4000,
            "data_dir": "/srv/weft",
            "abandon_after": 30,
            "tokens": ["full", {"token": "reader", "scopes": ["read"]}],
            "durability": {"fsync": "always"},
            "limits": {"stream_bytes": 1024},
        },
    )
    settings = load_settings(path, environ={})
    assert settings.host == "0.0.0.0"
    assert settings.port == 4000
    assert settings.data_dir == Path("/srv/weft")
    assert settings.abandon_after == 30
    assert settings.durability.fsync == "always"
    assert settings.limits.stream_bytes == 1024
    assert settings.limits.metadata_bytes == 16 * 1024  # untouched sibling keeps its default
    specs = settings.token_specs()
    assert specs[0] == TokenSpec(token="full", scopes=("read", "write", "admin"))
    assert specs[1] == TokenSpec(token="reader", scopes=("read",))


def test_env_port_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"port": 4000})
    assert load_settings(path, environ={"WEFT_PORT": "5000"}).port == 5000


def test_env_nested_key_overrides_one_value(tmp_path: Path) -> None:
    path = write(tmp_path, {"limits": {"metadata_bytes": 2048}})
    settings = load_settings(path, environ={"WEFT_LIMITS__STREAM_BYTES": "1048576"})
    assert settings.limits.stream_bytes == 1048576
    assert settings.limits.metadata_bytes == 2048


def test_http_timeouts_from_file_and_environment(tmp_path: Path) -> None:
    path = write(tmp_path, {"http": {"header_timeout": 1.5, "send_timeout": 2}})
    settings = load_settings(path, environ={"WEFT_HTTP__HEADER_TIMEOUT": "0.25"})
    assert settings.http.header_timeout == 0.25
    assert settings.http.send_timeout == 2


def test_env_text_values_stay_text() -> None:
    settings = load_settings(None, environ={"WEFT_SIGNING_KEY": "s3cret", "WEFT_HOST": "::1"})
    assert settings.signing_key == "s3cret"
    assert settings.host == "::1"


def test_env_variables_of_the_client_and_other_programs_are_ignored() -> None:
    environ = {"WEFT_TOKEN": "t", "WEFT_URL": "http://x", "PORT": "1", "HOME": "/root"}
    assert load_settings(None, environ=environ) == Settings()


def test_keyword_overrides_win_and_none_means_unset(tmp_path: Path) -> None:
    path = write(tmp_path, {"host": "0.0.0.0", "port": 4000})
    settings = load_settings(path, environ={"WEFT_PORT": "5000"}, host="127.0.0.2", port=None)
    assert settings.host == "127.0.0.2"
    assert settings.port == 5000


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"colour": "red"}, "colour"),
        ({"limits": {"stream_byte": 5}}, "limits.stream_byte"),
        ({"durability": {"fsync": "sometimes"}}, "durability.fsync"),
        ({"port": "eighty"}, "port"),
        ({"port": 70000}, "port"),
        ({"abandon_after": -1}, "abandon_after"),
        ({"limits": {"stream_bytes": "big"}}, "limits.stream_bytes"),
        ({"limits": "none"}, "limits"),
        ({"tokens": [{"token": "t", "scopes": ["root"]}]}, "tokens"),
        ({"tokens": [{"token": "t", "scope": ["read"]}]}, "tokens"),
        ({"log_level": "loud"}, "log_level"),
        ({"http": {"header_timeout": 0}}, "http.header_timeout"),
        ({"http": {"send_timeout": -5}}, "http.send_timeout"),
        ({"http": {"send_timeout": "long"}}, "http.send_timeout"),
        ({"http": {"idle_timeout": 5}}, "http.idle_timeout"),
    ],
)
def test_unknown_key_or_wrong_type_raises_config_error_naming_the_key(
    tmp_path: Path, data: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, data), environ={})
    assert key in str(caught.value)


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"WEFT_BOGUS": "1"}, "bogus"),
        ({"WEFT_PORT": "http"}, "port"),
        ({"WEFT_LIMITS__STREAM_BYTES": "lots"}, "limits.stream_bytes"),
        ({"WEFT_LIMITS__NOPE": "1"}, "limits.nope"),
        ({"WEFT_HTTP__SEND_TIMEOUT": "0"}, "http.send_timeout"),
    ],
)
def test_bad_environment_variable_raises_config_error_naming_the_key(
    environ: dict[str, str], key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ=environ)
    assert key in str(caught.value)


def test_missing_config_file_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path / "absent.yaml", environ={})
    assert "absent.yaml" in str(caught.value)


@pytest.mark.parametrize("text", ["port: [unclosed", "- just\n- a list\n"])
def test_unparsable_or_non_mapping_file_raises_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(write(tmp_path, text), environ={})


def test_settings_are_immutable() -> None:
    settings = Settings()
    with pytest.raises(ValueError):
        settings.port = 1  # type: ignore[misc]
