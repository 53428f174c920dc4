#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/ (small, valid inputs).

Run from anywhere: python3 fuzz/corpus/make-seeds.py. Needs protoc (binary
protobuf seeds) and the zstd command-line tool (zstd frames as a streaming
encoder writes them). The files are committed; rerun after changing the input
layout of a target (see the comment at the top of each fuzz/fuzz_*.cc).
"""
import base64
import gzip
import os
import shutil
import struct
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PROTO = os.path.join(ROOT, "proto")


def encode(message, text):
    return subprocess.run(
        ["protoc", "-I", PROTO, "--encode=fleetd.v1." + message,
         "fleetd/v1/sync.proto"],
        input=text.encode(), stdout=subprocess.PIPE, check=True).stdout


def zstd_stream(data):
    # From a pipe the tool does not know the size: no content-size field.
    return subprocess.run(["zstd", "-q", "-c", "-3"], input=data,
                          stdout=subprocess.PIPE, check=True).stdout


def zstd_raw(data, window_log=27):
    # One raw block in a frame with a 2^window_log window and no content size.
    header = (len(data) << 3) | 1  # last block, type 0 (raw)
    return (b"\x28\xb5\x2f\xfd" + b"\x00" + bytes([(window_log - 10) << 3]) +
            struct.pack("<I", header)[:3] + data)


def envelope(flags, payload):
    return bytes([flags]) + struct.pack(">I", len(payload)) + payload


def textproto_bytes(b):
    return "".join("\\%03o" % c for c in b)


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


METRICS = """metrics { name: "cpu_usage" value: 0.25
  timestamp { seconds: 1700000000 nanos: 5 }
  labels { key: "host" value: "rpi-0042" } }
metrics { name: "mem_free" value: 1024 }"""
LOGS = """logs { level: "error" message: "disk full" source: "app"
  timestamp { seconds: 1700000000 } fields { key: "path" value: "/var" } }"""
EVENTS = """events { name: "door_open" event_id: "e-1"
  timestamp { seconds: 1700000000 }
  properties { key: "room" value: "lab" } values { key: "temp" value: 21.5 } }"""
# One label set in two entry orders, then with a repeated key (not shared).
SHARED = """metrics { name: "up" value: 1
  labels { key: "a" value: "1" } labels { key: "b" value: "2" } }
metrics { name: "up" value: 2
  labels { key: "b" value: "2" } labels { key: "a" value: "1" } }
metrics { name: "up" value: 3 labels { key: "a" value: "1" }
  labels { key: "b" value: "2" } labels { key: "a" value: "1" } }
metrics { name: "up" value: 4 labels { key: "a" value: "1" }
  labels { key: "b" value: "2" } labels { key: "a" value: "9" } }"""
META = """metadata { device_id: "dev-1" org_id: "org-1" sequence_number: 7
  stream: "metrics" record_count: %d }"""


def main():
    for t in ["connect", "grpc_web", "decode", "codec", "ingest", "log_lines",
              "connect_error", "metric_samples"]:
        shutil.rmtree(os.path.join(HERE, t), ignore_errors=True)

    req = encode("SyncMetricsRequest", META % 2 + " batch { " + METRICS + " }")
    logs_req = encode("SyncLogsRequest", " batch { " + LOGS + " }")

    # connect: e framing, h headers, g GET message, j/p bodies, x error text.
    write("connect", "envelopes", b"e" + envelope(0, req) + envelope(2, b"{}"))
    write("connect", "envelope_empty", b"e" + envelope(1, b""))
    write("connect", "headers_proto",
          "happlication/connect+proto; charset=utf-8\ngzip\nzstd;q=0, gzip\n15000")
    write("connect", "headers_json", "happlication/json\nidentity\n\n1")
    write("connect", "headers_grpcweb", "happlication/grpc-web-text+proto\nzstd\n*\n")
    write("connect", "get_base64",
          b"g1" + base64.urlsafe_b64encode(req).rstrip(b"="))
    write("connect", "get_json", 'g0{"metadata":{"deviceId":"dev-1"}}')
    write("connect", "json",
          'j{"metadata":{"deviceId":"dev-1","sequenceNumber":"7"},'
          '"batch":{"metrics":[{"name":"cpu","value":1.5,'
          '"timestamp":"2024-05-01T10:00:00.5Z","labels":{"a":"b"}}],'
          '"compression":"zstd","compressedData":"KLUv/QBYAQAAYQ==",'
          '"originalSize":1}}')
    write("connect", "proto", b"p" + req)
    write("connect", "error_message", b"x\x03bad label \"\xc3\xa9\" at line 2\n")

    # grpc_web: t text, b binary frames, o grpc-timeout, m grpc-message.
    frames = envelope(0, logs_req) + envelope(1, gzip.compress(logs_req)) + \
        envelope(0x80, b"grpc-status: 0\r\n")
    write("grpc_web", "text", b"t" + base64.b64encode(frames[:20]) +
          base64.b64encode(frames[20:]))
    write("grpc_web", "binary", b"b" + frames)
    write("grpc_web", "timeout_seconds", "o15S")
    write("grpc_web", "timeout_nanos", "o99999999n")
    write("grpc_web", "message", b"m\x0dnot 100% \xe2\x9c\x93\r\ninjected: 1")

    # decode: text format (upper case) and binary (lower case) requests.
    write("decode", "metrics_text", "M" + META % 2 + " batch { " + METRICS + " }")
    write("decode", "logs_text", "L batch { " + LOGS + " }")
    write("decode", "events_text", "E batch { " + EVENTS + " }")
    write("decode", "metrics_binary", b"m" + req)
    inner = encode("MetricsBatch", METRICS)
    for name, packed, codec in [("zstd_stream", zstd_stream(inner), "zstd"),
                                ("zstd_window", zstd_raw(inner), "zstd"),
                                ("gzip", gzip.compress(inner), "gzip")]:
        write("decode", "metrics_" + name, "M" + META % 0 + (
            ' batch { compression: "%s" compressed_data: "%s" original_size: %d }'
            % (codec, textproto_bytes(packed), len(inner))))
    # metric_samples: a serialized MetricsBatch as it is after decompression.
    write("metric_samples", "batch", inner)
    write("metric_samples", "repeated_label",
          encode("MetricsBatch", 'metrics { name: "up" labels { key: "a" '
                 'value: "1" } labels { key: "a" value: "2" } }'))
    write("metric_samples", "shared_series", encode("MetricsBatch", SHARED))
    inner_logs = encode("LogsBatch", LOGS)
    write("decode", "logs_zstd_binary", b"l" + encode(
        "SyncLogsRequest",
        'batch { compression: "zstd" compressed_data: "%s" original_size: %d }'
        % (textproto_bytes(zstd_stream(inner_logs)), len(inner_logs))))

    # codec: codec byte, limit byte (mod 6: 0, 1, 100, 4 KiB, 64 KiB, 1 MiB).
    text = b"cpu 0.25 device_id=rpi-0042 1700000000\n" * 20
    write("codec", "zstd_stream", b"z\x03" + zstd_stream(text))
    write("codec", "zstd_window27", b"z\x03" + zstd_raw(text))
    write("codec", "zstd_two_frames", b"z\x04" + zstd_stream(b"a") +
          zstd_raw(b"bc", 20))
    write("codec", "gzip", b"g\x03" + gzip.compress(text))
    write("codec", "gzip_members", b"g\x03" + gzip.compress(b"hello ") +
          gzip.compress(b"world"))
    write("codec", "none", b"n\x02plain")

    # ingest: p Prometheus text, j JSON lines.
    write("ingest", "prometheus",
          "p# HELP temp Temperature\n# TYPE temp gauge\n"
          'temp{room="lab",floor="2"} 21.5 1700000000000\n'
          'requests_total{path="/a\\"b\\\\c\\n"} 1e3\n'
          "up 1\r\n\nempty{} -0.5\n")
    write("ingest", "json_lines",
          'j{"message": "disk full", "level": "ERR", "source": "app", '
          '"fields": {"k": "v"}, "timestamp": "2024-05-01T10:00:00.5+02:00"}\n'
          '\n{"message": "ok", "timestamp": 1700000000000}\n')

    # log_lines: max_line_bytes-16, mode, split point, batch lines; content.
    write("log_lines", "plain", b"\x30\x00\x80\x03"
          b"E0102 12:00:00 app.cc:1] failed\nINFO started\r\n"
          b"level=warn disk\n[error] x\npartial")
    write("log_lines", "long_and_utf8", b"\x00\x00\x40\x00" +
          b"x" * 40 + b"\n\xc3\xa9\xe2\x9c\x93 \xff\xfe bad utf8\n\xe2\x9c\n")
    write("log_lines", "chunk_boundary", b"\x10\x15\xc0\x07" +
          b"line one\nline two is a bit longer\n" * 4 + b"tail")
    write("log_lines", "rotate", b"\x20\x02\x90\x01"
          b"before rotation\nunterminated old\nafter rotation\nmore\n")

    # connect_error: s status/content type/body, r Retry-After, c code name.
    write("connect_error", "connect_body",
          's503\napplication/json; charset=utf-8\n'
          '{"code":"unavailable","message":"backend down","details":[]}')
    write("connect_error", "proxy_500", "s500\ntext/html\n<html>Bad Gateway</html>")
    write("connect_error", "unknown_code", 's400\napplication/json\n{"code":"ok"}')
    write("connect_error", "retry_seconds", "r120")
    write("connect_error", "retry_date", "rWed, 21 Oct 2015 07:28:00 GMT")
    write("connect_error", "code_name", "cresource_exhausted")


if __name__ == "__main__":
    main()
