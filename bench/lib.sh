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

# build: the release binary, as $BIN (PALISADE_BIN=path measures that binary instead, e.g. an
# earlier commit's, without building).
build() {
  if [ -n "${PALISADE_BIN:-}" ]; then BIN=$PALISADE_BIN; return; fi
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

# start_upstream PORT [WORKERS]: the upstream, a separate nginx answering every request with
# 200 and a 37-byte JSON body (`return`, no access log), fast enough (~200k req/s on one worker
# here) that neither proxy waits on it. Sets $NGINX to the binary.
start_upstream() {
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  local dir; dir=$(mktemp -d)
  cat > "$dir/nginx.conf" <<NGINX
worker_processes ${2:-1};
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$1 backlog=4096;
    location / {
      default_type application/json;
      return 200 '{"id":42,"name":"item","price":1.5}\n';
    }
  }
}
NGINX
  "$NGINX" -c "$dir/nginx.conf" -p "$dir" & pids+=($!)
  wait_port "$1"
}

# nginx_config DIR UPSTREAM_PORT LISTEN_PORT [DIRECTIVE...]: writes DIR/nginx.conf, nginx
# proxy_pass with $NGINX_WORKERS workers (default 1) and keepalive to the upstream; no access log
# unless NGINX_ACCESS_LOG names a file (then a JSON line per request, buffered, with the fields
# Palisade's decision log carries that nginx knows). Extra top-level directives (e.g.
# "master_process off;") go first. Sets $NGINX to the binary.
nginx_config() {
  local dir=$1 up=$2 port=$3; shift 3
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  local log="access_log off;"
  if [ -n "${NGINX_ACCESS_LOG:-}" ]; then
    log="log_format decision escape=json '{\"time\":\"\$time_iso8601\",\"request_id\":\"\$request_id\",\"client_ip\":\"\$remote_addr\",\"method\":\"\$request_method\",\"path\":\"\$uri\",\"query\":\"\$args\",\"status\":\$status,\"latency_ms\":\$request_time,\"upstream_ms\":\"\$upstream_response_time\",\"user_agent\":\"\$http_user_agent\",\"tenant\":\"\$http_x_tenant\",\"bytes\":\$body_bytes_sent,\"action\":\"allow\",\"rule\":\"default/allow\"}';
  access_log $NGINX_ACCESS_LOG decision buffer=64k flush=1s;"
  fi
  {
    printf '%s\n' "$@"
    cat <<NGINX
worker_processes ${NGINX_WORKERS:-1};
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  $log
  keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$up; keepalive 256; }
  server {
    listen 127.0.0.1:$port backlog=4096;
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
