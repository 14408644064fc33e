#!/usr/bin/env python3
"""Writes pontoon.json beside this script: the Grafana dashboard for the series of the README's
Metrics table. Edit the panels here and run it again, rather than editing the JSON by hand.
"""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}
panels = []
def panel(title, exprs, unit="short", w=12, h=8, desc="", stack=False):
    i = len(panels)
    x = (i % 2) * 12 if w == 12 else 0
    p = {
        "id": i + 1, "type": "timeseries", "title": title, "description": desc,
        "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": (i // 2) * h},
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 10,
                          "stacking": {"mode": "normal" if stack else "none"}}}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "multi"}},
        "targets": [{"refId": chr(65 + j), "datasource": DS, "expr": e, "legendFormat": l}
                    for j, (e, l) in enumerate(exprs)],
    }
    panels.append(p)
N = '{node=~"$node"}'
def sel(extra=""):
    return '{node=~"$node"' + (", " + extra if extra else "") + "}"
panel("Proposals acknowledged per second", [
    (f"sum by (node) (rate(pontoon_proposals_acknowledged_total{N}[$__rate_interval]))", "node {{node}}"),
    (f"sum(rate(pontoon_proposals_acknowledged_total{N}[$__rate_interval]))", "cluster")],
    "ops", desc="Proposals committed by a quorum, applied and acknowledged, counted where they were submitted.")
panel("Commit latency p50 / p99", [
    (f"histogram_quantile(0.5, sum by (le) (rate(pontoon_commit_latency_seconds_bucket{N}[$__rate_interval])))", "p50"),
    (f"histogram_quantile(0.99, sum by (le) (rate(pontoon_commit_latency_seconds_bucket{N}[$__rate_interval])))", "p99")],
    "s", desc="Proposal submitted to acknowledged.")
panel("Fsyncs per second, and per acknowledged proposal", [
    (f"sum by (node) (rate(pontoon_storage_fsyncs_total{N}[$__rate_interval]))", "fsyncs/s node {{node}}"),
    (f"sum(rate(pontoon_storage_fsyncs_total{N}[$__rate_interval])) / sum(rate(pontoon_proposals_acknowledged_total{N}[$__rate_interval]))", "fsyncs per proposal (all replicas)")],
    "short")
panel("Fsync latency p50 / p99, groups per persist", [
    (f"histogram_quantile(0.5, sum by (le) (rate(pontoon_storage_fsync_seconds_bucket{N}[$__rate_interval])))", "fsync p50"),
    (f"histogram_quantile(0.99, sum by (le) (rate(pontoon_storage_fsync_seconds_bucket{N}[$__rate_interval])))", "fsync p99")],
    "s")
panel("Groups led per node", [
    (f'sum by (node) (pontoon_groups{sel(chr(114)+"ole="+chr(34)+"leader"+chr(34))})', "node {{node}}")],
    "short", desc="A leader kill shows as one node dropping to nothing (it stops reporting) and the survivors taking its groups.")
panel("Leaderless groups, candidates", [
    (f"max by (node) (pontoon_groups_leaderless{N})", "leaderless on {{node}}"),
    (f'sum by (node) (pontoon_groups{sel("role=~" + chr(34) + "candidate|pre_candidate" + chr(34))})', "campaigning on {{node}}")],
    "short")
panel("Peers up (node-level liveness) and connected (QUIC)", [
    (f"pontoon_peer_up{N}", "{{node}} hears {{peer}}"),
    (f"pontoon_transport_peer_connected{N}", "{{node}} connected to {{peer}}")],
    "short", desc="0: the peer is silent past the liveness timeout / has no established connection.")
panel("Refusals and failures by reason", [
    (f"sum by (reason) (rate(pontoon_transport_connections_refused_total{N}[$__rate_interval]))", "connection refused: {{reason}}"),
    (f"sum by (reason) (rate(pontoon_transport_stream_resets_total{N}[$__rate_interval]))", "stream reset: {{reason}}"),
    (f"sum by (reason) (rate(pontoon_messages_refused_total{N}[$__rate_interval]))", "raft message refused: {{reason}}"),
    (f"sum by (reason) (rate(pontoon_requests_failed_total{N}[$__rate_interval]))", "request failed: {{reason}}"),
    (f"sum by (reason) (rate(pontoon_transport_dropped_total{N}[$__rate_interval]))", "dropped: {{reason}}")],
    "ops")
panel("Transport bytes per second, by stream kind", [
    (f"sum by (kind) (rate(pontoon_transport_sent_bytes_total{N}[$__rate_interval]))", "sent {{kind}}"),
    (f"sum by (kind) (rate(pontoon_transport_received_bytes_total{N}[$__rate_interval]))", "received {{kind}}")],
    "Bps")
panel("Frames (by stream kind) and raft messages per second", [
    (f"sum by (kind) (rate(pontoon_transport_frames_sent_total{N}[$__rate_interval]))", "frames sent {{kind}}"),
    (f"sum by (node) (rate(pontoon_raft_messages_total{N}[$__rate_interval]))", "raft messages {{node}}"),
    (f"sum by (node) (rate(pontoon_envelopes_total{N}[$__rate_interval]))", "envelopes (coalesced) {{node}}")],
    "ops")
panel("Queue depths", [
    (f"pontoon_queue_depth{N}", "{{node}} {{kind}}"),
    (f"pontoon_transport_queued_envelopes{N}", "{{node}} transport queue")],
    "short")
panel("Quiet and awake groups", [
    (f"sum by (node) (pontoon_groups_quiet{N})", "quiet {{node}}"),
    (f"sum by (node) (pontoon_groups_awake{N})", "awake {{node}}")],
    "short")
panel("Elections started and deferred per second", [
    (f"sum by (node) (rate(pontoon_elections_started_total{N}[$__rate_interval]))", "started {{node}}"),
    (f"sum by (node) (rate(pontoon_elections_deferred_total{N}[$__rate_interval]))", "deferred {{node}}")],
    "ops")
panel("Cycle size: groups and bytes per persist (mean)", [
    (f"sum by (node) (rate(pontoon_storage_persist_groups_sum{N}[$__rate_interval])) / sum by (node) (rate(pontoon_storage_persist_groups_count{N}[$__rate_interval]))", "groups/persist {{node}}"),
    (f"sum by (node) (rate(pontoon_storage_persist_bytes_sum{N}[$__rate_interval])) / sum by (node) (rate(pontoon_storage_persist_bytes_count{N}[$__rate_interval])) / 1024", "KiB/persist {{node}}")],
    "short")
panel("Apply time per cycle p99", [
    (f"histogram_quantile(0.99, sum by (le, node) (rate(pontoon_apply_seconds_bucket{N}[$__rate_interval])))", "{{node}}")],
    "s")
panel("Snapshots", [
    (f"sum by (kind) (rate(pontoon_transport_snapshots_total{N}[$__rate_interval]))", "{{kind}}")],
    "ops")
dashboard = {
    "__inputs": [],
    "title": "Pontoon",
    "uid": "pontoon",
    "description": "Pontoon nodes: throughput, commit latency, fsyncs, leaders, peers, refusals. Series are documented in the README's Metrics table.",
    "tags": ["pontoon", "raft"],
    "timezone": "browser",
    "schemaVersion": 39,
    "version": 1,
    "refresh": "5s",
    "time": {"from": "now-15m", "to": "now"},
    "templating": {"list": [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0},
        {"name": "node", "label": "node", "type": "query", "datasource": DS,
         "query": {"query": "label_values(pontoon_cycles_total, node)", "refId": "node"},
         "definition": "label_values(pontoon_cycles_total, node)",
         "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2,
         "current": {"text": "All", "value": "$__all"}, "hide": 0},
    ]},
    "panels": panels,
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pontoon.json")
with open(out, "w", encoding="utf-8") as f:
    json.dump(dashboard, f, indent=2)
    f.write("\n")
print(f"{out}: {len(panels)} panels")
