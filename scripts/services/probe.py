#!/usr/bin/env python3
"""Readiness probes for scripts/services.sh, Python standard library only.

    probe.py kafka HOST:PORT            ApiVersions v0 + Metadata v1 round trip; prints
                                        `broker ID HOST:PORT` and `topic NAME PARTITIONS` lines
    probe.py http URL                   any HTTP answer; prints the status and the first line
                                        of the body; exit 0 only for 200
    probe.py s3-anon URL                unauthenticated GET, expects an S3 XML <Error>; prints
                                        its <Code> (AccessDenied from garage)
    probe.py s3-signed ENDPOINT REGION KEY_ID SECRET BUCKET
                                        SigV4-signed ListObjectsV2 (max-keys=1), expects 200

Exit status: 0 ready, 1 answered but not as expected, 2 no answer (refused, timeout, reset).
HTTP goes straight to the address (http.client): proxy variables in the environment do not apply.
"""

import re
import socket
import struct
import sys

TIMEOUT = 3.0


class NoAnswer(Exception):
    pass


class BadAnswer(Exception):
    pass


# --- Kafka -----------------------------------------------------------------------------------


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise NoAnswer("connection closed by the broker")
        buf += chunk
    return buf


def _kafka_call(sock, api_key, api_version, correlation_id, body):
    client_id = b"cranium-services"
    header = struct.pack(">hhih", api_key, api_version, correlation_id, len(client_id)) + client_id
    msg = header + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    data = _recv_exact(sock, size)
    (got,) = struct.unpack_from(">i", data, 0)
    if got != correlation_id:
        raise BadAnswer(f"correlation id {got}, expected {correlation_id}")
    return data[4:]


class _Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, fmt):
        vals = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return vals if len(vals) > 1 else vals[0]

    def string(self):
        n = self.take(">h")
        if n < 0:
            return None
        s = self.data[self.pos : self.pos + n].decode("utf-8", "replace")
        self.pos += n
        return s


def kafka(addr):
    host, _, port = addr.rpartition(":")
    try:
        sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    except OSError as e:
        raise NoAnswer(f"{addr}: {e}")
    try:
        sock.settimeout(TIMEOUT)
        # ApiVersions v0: empty body; response: error_code, [api_key, min, max].
        r = _Reader(_kafka_call(sock, 18, 0, 1, b""))
        err = r.take(">h")
        if err != 0:
            raise BadAnswer(f"ApiVersions error code {err}")
        versions = {}
        for _ in range(r.take(">i")):
            key, lo, hi = r.take(">hhh")
            versions[key] = (lo, hi)
        lo, hi = versions.get(3, (None, None))
        if lo is None or not lo <= 1 <= hi:
            raise BadAnswer(f"broker does not offer Metadata v1 (offers {lo}..{hi})")
        # Metadata v1 with a null topic array: every topic.
        r = _Reader(_kafka_call(sock, 3, 1, 2, struct.pack(">i", -1)))
        lines = []
        for _ in range(r.take(">i")):
            node_id = r.take(">i")
            bhost = r.string()
            bport = r.take(">i")
            r.string()  # rack
            lines.append(f"broker {node_id} {bhost}:{bport}")
        r.take(">i")  # controller id
        for _ in range(r.take(">i")):
            r.take(">h")  # topic error code
            name = r.string()
            r.take(">b")  # is_internal
            partitions = r.take(">i")
            for _ in range(partitions):
                r.take(">hii")  # error code, index, leader
                for _ in range(2):  # replicas, isr
                    n = r.take(">i")
                    r.pos += 4 * n
            lines.append(f"topic {name} {partitions}")
        print("\n".join(lines))
    except (OSError, socket.timeout) as e:
        raise NoAnswer(f"{addr}: {e}")
    except struct.error as e:
        raise BadAnswer(f"malformed Kafka response: {e}")
    finally:
        sock.close()


# --- HTTP / S3 -------------------------------------------------------------------------------


def _split(url):
    m = re.fullmatch(r"http://([^/?#]+)(.*)", url)
    if not m:
        raise SystemExit(f"probe.py: not an http:// URL: {url}")
    return m.group(1), m.group(2) or "/"


def _get(url, headers=None):
    import http.client

    netloc, path = _split(url)
    conn = http.client.HTTPConnection(netloc, timeout=TIMEOUT)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException) as e:
        raise NoAnswer(f"{url}: {e}")
    finally:
        conn.close()


def http(url):
    status, body = _get(url)
    first = body.decode("utf-8", "replace").strip().splitlines()[:1]
    print(f"{status} {first[0] if first else ''}".strip())
    if status != 200:
        raise BadAnswer(f"HTTP {status}")


def s3_anon(url):
    status, body = _get(url)
    text = body.decode("utf-8", "replace")
    m = re.search(r"<Error>.*?<Code>([^<]*)</Code>", text, re.S)
    if not m:
        raise BadAnswer(f"HTTP {status} without an S3 XML error: {text[:200]!r}")
    print(m.group(1))


def s3_signed(endpoint, region, key_id, secret, bucket):
    import datetime
    import hashlib
    import hmac
    import urllib.parse

    def _sign(key, msg):
        return hmac.new(key, msg.encode(), hashlib.sha256).digest()

    netloc, _ = _split(endpoint)
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    path = "/" + urllib.parse.quote(bucket, safe="")
    query = "list-type=2&max-keys=1"
    payload = hashlib.sha256(b"").hexdigest()
    headers = {"host": netloc, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        ["GET", path, query, "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)), signed, payload]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    k = _sign(("AWS4" + secret).encode(), day)
    for part in (region, "s3", "aws4_request"):
        k = _sign(k, part)
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={key_id}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
    status, body = _get(f"http://{netloc}{path}?{query}", headers)
    text = body.decode("utf-8", "replace")
    if status != 200 or "<ListBucketResult" not in text:
        m = re.search(r"<Code>([^<]*)</Code>.*?<Message>([^<]*)</Message>", text, re.S)
        detail = f"{m.group(1)}: {m.group(2)}" if m else text[:200]
        raise BadAnswer(f"signed ListObjectsV2 on {bucket}: HTTP {status} {detail}")
    print(f"ListObjectsV2 {bucket}: 200")


def main(argv):
    cmds = {"kafka": (kafka, 1), "http": (http, 1), "s3-anon": (s3_anon, 1), "s3-signed": (s3_signed, 5)}
    if len(argv) < 2 or argv[1] not in cmds or len(argv) - 2 != cmds[argv[1]][1]:
        print(__doc__, file=sys.stderr)
        return 64
    fn, _ = cmds[argv[1]]
    try:
        fn(*argv[2:])
        return 0
    except NoAnswer as e:
        print(f"no answer: {e}", file=sys.stderr)
        return 2
    except BadAnswer as e:
        print(f"unexpected answer: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
