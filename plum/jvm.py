"""Where the JVM pieces are: `java`, and the jars `make setup` resolved from Maven Central."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from plum.config import REPO_ROOT

JVM_DIR = Path(os.environ.get("PLUM_JVM_DIR", REPO_ROOT / "build" / "jvm"))


class JvmSetupError(RuntimeError):
    """Java or the resolved jars are missing; the message says what to install or run."""


def java_binary() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise JvmSetupError(
            "java not found: install a JDK 17 (apt-get install openjdk-17-jdk-headless)"
        )
    return found


def jar_dir(name: str) -> Path:
    """build/jvm/<name> (kafka or flink), checked to hold jars."""
    path = JVM_DIR / name
    if not path.is_dir() or not any(path.glob("*.jar")):
        raise JvmSetupError(
            f"no jars in {path}: run `make setup` (needs mvn: apt-get install maven)"
        )
    return path


def kafka_classpath() -> str:
    return str(jar_dir("kafka") / "*")


def flink_kafka_connector_jar() -> Path:
    jars = sorted(jar_dir("flink").glob("flink-sql-connector-kafka-*.jar"))
    if not jars:
        raise JvmSetupError(
            f"flink-sql-connector-kafka jar missing in {JVM_DIR / 'flink'}: run `make setup`"
        )
    return jars[-1]


# The Flink job's JVM operator (streams/flink/jvm), built by `make setup`.
PLUM_FLINK_JAR = "plum-flink.jar"


def plum_flink_jar() -> Path:
    """build/jvm/plum-flink.jar: the job's Java Process Table Functions."""
    path = JVM_DIR / PLUM_FLINK_JAR
    if not path.is_file():
        raise JvmSetupError(
            f"{path} is missing: run `make setup` (builds streams/flink/jvm with mvn)"
        )
    return path
