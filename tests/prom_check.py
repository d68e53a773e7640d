#!/usr/bin/env python3
"""Parses Prometheus text (stdin) with the official prometheus_client parser and prints the
families as JSON: {name: {"type": t, "samples": [[sample_name, labels, value], ...]}}.
Used by tests/observability.rs so that a real parser judges sluice's exposition format."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    out[fam.name] = {
        "type": fam.type,
        "samples": [[s.name, s.labels, s.value] for s in fam.samples],
    }
json.dump(out, sys.stdout)
