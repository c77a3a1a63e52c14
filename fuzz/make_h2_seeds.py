#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_h2_session (fuzz/corpus/h2_session/):
valid client frame sequences for the locations of the target's built-in
configuration. Each file is one options byte (see fuzz/fuzz_h2_session.c)
and the bytes a client sends. Needs python3-hpack and python3-hyperframe.

    python3 fuzz/make_h2_seeds.py fuzz/corpus/h2_session
"""
import os
import sys

from hpack import Encoder
from hyperframe.frame import (ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame,
                              PingFrame, PriorityFrame, RstStreamFrame, SettingsFrame,
                              WindowUpdateFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
OPT_PREFACE = 0x01


def chunks(n):
    """options bits 1-3: feed in chunks of 4**n bytes"""
    return (n & 7) << 1


def sink(n):
    """options bits 4-6: the sink takes 4**n bytes per write"""
    return (n & 7) << 4


def clock():
    """options bit 7: the clock jumps 11 s after each chunk"""
    return 0x80


def req(enc, method="GET", path="/", authority="localhost", extra=()):
    return enc.encode([(":method", method), (":scheme", "http"), (":path", path),
                       (":authority", authority), *extra])


def start(settings=None):
    sf = SettingsFrame(0)
    for k, v in (settings or {}).items():
        sf.settings[k] = v
    return [sf]


def seq(*frames):
    return b"".join(f if isinstance(f, bytes) else f.serialize() for f in frames)


def seeds():
    out = {}
    e = Encoder()
    out["get"] = (0, PREFACE + seq(
        *start(), SettingsFrame(0, flags=["ACK"]),
        HeadersFrame(1, req(e), flags=["END_HEADERS", "END_STREAM"])))

    e = Encoder()
    out["get_in_small_chunks"] = (chunks(1) | sink(2), PREFACE + seq(
        *start(), HeadersFrame(1, req(e, path="/big"), flags=["END_HEADERS", "END_STREAM"])))

    e = Encoder()
    out["get_auto_preface_vhost_cookies"] = (OPT_PREFACE, seq(
        HeadersFrame(1, req(e, authority="vhost.example",
                            extra=[("cookie", "a=1"), ("cookie", "b=2"), ("accept", "*/*")]),
                     flags=["END_HEADERS", "END_STREAM"]),
        HeadersFrame(3, req(e, path="/redirect?x=1"), flags=["END_HEADERS", "END_STREAM"]),
        HeadersFrame(5, req(e, method="HEAD", path="/empty"),
                     flags=["END_HEADERS", "END_STREAM"])))

    e = Encoder()
    out["post_data_buffered"] = (0, PREFACE + seq(
        *start(),
        HeadersFrame(1, req(e, "POST", "/buffered", extra=[("content-length", "11")]),
                     flags=["END_HEADERS"]),
        DataFrame(1, b"hello ", flags=[]),
        DataFrame(1, b"world", flags=["END_STREAM"])))

    e = Encoder()
    out["post_data_streamed_trailers"] = (chunks(2), PREFACE + seq(
        *start(),
        HeadersFrame(1, req(e, "POST", "/streamed", extra=[("te", "trailers")]),
                     flags=["END_HEADERS"]),
        DataFrame(1, b"x" * 5000),
        DataFrame(1, b"", flags=[]),
        HeadersFrame(1, e.encode([("x-checksum", "abc"), ("grpc-status", "0")]),
                     flags=["END_HEADERS", "END_STREAM"])))

    e = Encoder()
    block = req(e, path="/big", extra=[("user-agent", "seed/1.0"), ("x-long", "v" * 300)])
    out["continuation"] = (0, PREFACE + seq(
        *start(),
        HeadersFrame(1, block[:10], flags=["END_STREAM"]),
        ContinuationFrame(1, block[10:100]),
        ContinuationFrame(1, block[100:], flags=["END_HEADERS"])))

    e = Encoder()
    out["rst_stream"] = (chunks(1), PREFACE + seq(
        *start(),
        HeadersFrame(1, req(e, path="/big"), flags=["END_HEADERS", "END_STREAM"]),
        RstStreamFrame(1, error_code=8),
        HeadersFrame(3, req(e, "POST", "/buffered"), flags=["END_HEADERS"]),
        DataFrame(3, b"partial"),
        RstStreamFrame(3, error_code=0)))

    out["ping"] = (0, PREFACE + seq(
        *start(), PingFrame(0, opaque_data=b"12345678"),
        PingFrame(0, opaque_data=b"abcdefgh", flags=["ACK"])))

    e = Encoder()
    out["window_update_small_window"] = (chunks(1) | sink(1), PREFACE + seq(
        *start({SettingsFrame.INITIAL_WINDOW_SIZE: 100, SettingsFrame.MAX_FRAME_SIZE: 16384}),
        HeadersFrame(1, req(e, path="/big"), flags=["END_HEADERS", "END_STREAM"]),
        WindowUpdateFrame(1, window_increment=3000),
        WindowUpdateFrame(0, window_increment=3000),
        SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 65535}),
        WindowUpdateFrame(1, window_increment=60000)))

    e = Encoder()
    out["expect_100_priority"] = (0, PREFACE + seq(
        *start(),
        PriorityFrame(3, depends_on=0, stream_weight=10),
        HeadersFrame(1, req(e, "PUT", "/buffered", extra=[("expect", "100-continue"),
                                                          ("content-length", "4")]),
                     flags=["END_HEADERS", "PRIORITY"], depends_on=0, stream_weight=200),
        DataFrame(1, b"body", flags=["END_STREAM"])))

    e = Encoder()
    out["header_list_too_large"] = (0, PREFACE + seq(
        *start(),
        HeadersFrame(1, req(e, extra=[("x-big", "b" * 3000)]),
                     flags=["END_HEADERS", "END_STREAM"]),
        HeadersFrame(3, req(e, path="/missing"), flags=["END_HEADERS", "END_STREAM"])))

    e = Encoder()
    out["connect_and_bad_path"] = (0, PREFACE + seq(
        *start(),
        HeadersFrame(1, e.encode([(":method", "CONNECT"), (":authority", "example.com:443")]),
                     flags=["END_HEADERS"]),
        HeadersFrame(3, req(e, path="/../../etc/passwd"), flags=["END_HEADERS", "END_STREAM"]),
        HeadersFrame(5, req(e, path="*", method="OPTIONS"), flags=["END_HEADERS", "END_STREAM"])))

    e = Encoder()
    out["goaway_from_client"] = (chunks(1), PREFACE + seq(
        *start(),
        HeadersFrame(1, req(e), flags=["END_HEADERS", "END_STREAM"]),
        GoAwayFrame(0, last_stream_id=1, error_code=0)))

    e = Encoder()
    out["clock_window_stalled"] = (clock() | chunks(4), PREFACE + seq(
        *start({SettingsFrame.INITIAL_WINDOW_SIZE: 10}),
        HeadersFrame(1, req(e, path="/big"), flags=["END_HEADERS", "END_STREAM"]),
        PingFrame(0, opaque_data=b"stalled!")))

    e = Encoder()
    out["clock_body_timeout"] = (clock() | chunks(3), PREFACE + seq(
        *start(),
        HeadersFrame(1, req(e, "POST", "/buffered", extra=[("content-length", "100")]),
                     flags=["END_HEADERS"]),
        DataFrame(1, b"only part of the body"),
        PingFrame(0, opaque_data=b"waiting!")))

    out["clock_idle"] = (clock() | chunks(1), PREFACE + seq(*start()))

    out["http1_request"] = (0, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    out["invalid_preface"] = (0, b"INVALID CONNECTION PREFACE\r\n\r\n")
    return out


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus/h2_session"
    os.makedirs(d, exist_ok=True)
    for name, (opt, data) in seeds().items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(bytes([opt]) + data)


if __name__ == "__main__":
    main()
