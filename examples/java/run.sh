#!/usr/bin/env bash
# Builds examples/java/ChurnExample.java against Spark (pyspark's jars) and
# stoker-spark.jar, then runs it with spark-submit on a two-executor local cluster.
# `make example-java` runs this after building everything.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/.venv"
spark_home="$("$venv/bin/python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
jar="$root/jvm-shim/target/stoker-spark.jar"
build="$root/target/examples/java"
mkdir -p "$build/classes"
javac -d "$build/classes" -cp "$spark_home/jars/*:$jar" "$root/examples/java/ChurnExample.java"
jar cf "$build/churn-example.jar" -C "$build/classes" .
SPARK_HOME="$spark_home" "$spark_home/bin/spark-submit" \
  --master "${MASTER:-local[2]}" \
  --jars "$jar" \
  --conf spark.stoker.server.bin="$root/target/release/stoker" \
  --conf spark.ui.enabled=false \
  --driver-java-options "-Dlog4j2.configurationFile=$root/examples/java/log4j2.properties" \
  --class ChurnExample "$build/churn-example.jar" "$build/predictions"
