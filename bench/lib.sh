# Shared by the bench/*.sh scripts (sourced, not run): tool installation, the release build,
# free ports, waiting for a listener, the upstream, the nginx config, and cleanup of everything
# started. Everything listens on 127.0.0.1 only.

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=bench/out
mkdir -p "$OUT"

# need COMMAND:PACKAGE ...: installs the Debian packages of the commands that are missing.
need() {
  local missing=() pair cmd pkg
  for pair in "$@"; do
    cmd=${pair%%:*}; pkg=${pair#*:}
    command -v "$cmd" >/dev/null || [ -x "/usr/sbin/$cmd" ] || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# build: the release binary, as $BIN.
build() {
  cargo build --release -q -p palisade
  BIN=$PWD/target/release/palisade
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port PORT: until something listens on it (up to 30 s; slow starts under valgrind too).
wait_port() {
  for _ in $(seq 1 150); do (echo > /dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.2; done
  echo "port $1 never opened" >&2; exit 1
}

# Processes started in the background are recorded in pids and stopped on exit.
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# start_upstream PORT: the upstream, Palisade's own sample API with one worker thread.
start_upstream() {
  "$BIN" sample-api --listen "127.0.0.1:$1" --workers 1 2>"$OUT/upstream.log" & pids+=($!)
  wait_port "$1"
}

# nginx_config DIR UPSTREAM_PORT LISTEN_PORT [DIRECTIVE...]: writes DIR/nginx.conf, nginx
# proxy_pass with one worker and keepalive to the upstream, no access log; extra top-level
# directives (e.g. "master_process off;") go first. Sets $NGINX to the binary.
nginx_config() {
  local dir=$1 up=$2 port=$3; shift 3
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  {
    printf '%s\n' "$@"
    cat <<NGINX
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream backend { server 127.0.0.1:$up; keepalive 256; }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
NGINX
  } > "$dir/nginx.conf"
}
