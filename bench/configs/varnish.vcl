# Portico benchmark — Varnish peer (Debian varnish 7.1), cache scenarios (g) only.
# Template: bench/run.py substitutes @ORIGIN_PORT@ (these comment lines are dropped first).
# Command line (bench/run.py proxy_argv): varnishd -F -j none -a 127.0.0.1:@PORT@ -f <this>
# -n @DIR@/varnish -s malloc,256m -p thread_pools=1 -p timeout_idle=60, pinned with taskset
# like every proxy: one thread pool on one core (Varnish serves each connection from a
# worker thread of that pool; the manager process is idle). -j none: the runner is root, and
# the default unix jail would switch to the varnish user, which cannot read the 0700 scratch
# dir. Storage is RAM (malloc), objects kept 10 minutes (the origin sends no Cache-Control),
# backend connections are pooled and kept alive (Varnish's default, 60 s idle).
# Varnish writes its shared-memory log (VSL) for every request; nothing reads it here.
vcl 4.1;

backend origin {
    .host = "127.0.0.1";
    .port = "@ORIGIN_PORT@";
    .connect_timeout = 5s;
    .first_byte_timeout = 60s;
    .between_bytes_timeout = 60s;
}

sub vcl_backend_response {
    set beresp.ttl = 10m;
}
