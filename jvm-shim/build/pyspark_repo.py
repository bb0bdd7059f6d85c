"""Expose pyspark's own jars to Maven as a local repository.

Spark 4.3.0 is not on the Maven repository this project can reach, but
`pip install pyspark==4.3.0` ships every jar Spark runs with. This script
links each of them into Maven's local repository (target/m2) as
`dev.stoker.pyspark:<jar name>:<pyspark version>` and writes one aggregate
POM, `dev.stoker.pyspark:pyspark-jars`, that depends on all of them. The
jvm-shim POM depends on that aggregate with `provided` scope, so javac,
scalac, Surefire and Failsafe all see exactly the classpath Spark runs
with, and nothing is copied or downloaded.

Usage: python pyspark_repo.py <maven local repository>
"""

import sys
from pathlib import Path

import pyspark

GROUP = "dev.stoker.pyspark"
AGGREGATE = "pyspark-jars"


def pom(artifact: str, version: str, packaging: str, deps: list[str]) -> str:
    body = "".join(
        f"    <dependency><groupId>{GROUP}</groupId><artifactId>{d}</artifactId>"
        f"<version>{version}</version></dependency>\n"
        for d in deps
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        f"  <groupId>{GROUP}</groupId>\n  <artifactId>{artifact}</artifactId>\n"
        f"  <version>{version}</version>\n  <packaging>{packaging}</packaging>\n"
        + (f"  <dependencies>\n{body}  </dependencies>\n" if deps else "")
        + "</project>\n"
    )


def main() -> None:
    repo = Path(sys.argv[1]).resolve()
    version = pyspark.__version__
    jars_dir = Path(pyspark.__file__).parent / "jars"
    jars = sorted(jars_dir.glob("*.jar"))
    if not jars:
        sys.exit(f"no jars in {jars_dir}; is pyspark installed completely?")
    base = repo / GROUP.replace(".", "/")
    names = []
    for jar in jars:
        name = jar.stem
        names.append(name)
        folder = base / name / version
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / f"{name}-{version}.jar"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(jar)
        (folder / f"{name}-{version}.pom").write_text(pom(name, version, "jar", []))
    folder = base / AGGREGATE / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{AGGREGATE}-{version}.pom").write_text(pom(AGGREGATE, version, "pom", names))
    print(f"pyspark {version}: {len(names)} jars from {jars_dir} in {base}")


if __name__ == "__main__":
    main()
