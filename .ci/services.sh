# Starts the outside services the tests use, installing them from Debian's packages when they
# are missing, and exports where they are. Source it (as root): `source .ci/services.sh`.
#   PostgreSQL (Debian's cluster, on 127.0.0.1:5432): role `hongbao` (password `hongbao`,
#   may create databases; each test makes its own) -> HONGBAO_TEST_PG
#   nats-server with JetStream on 127.0.0.1:14222 (store under /tmp/hongbao-nats; each test
#   makes its own stream) -> HONGBAO_TEST_NATS
# Without these variables the tests that need a service print one line and skip; with CI=1
# they fail instead.
if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! command -v nats-server >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql nats-server >/dev/null
fi
hb_pg_version=$(pg_lsclusters -h | awk 'NR == 1 { print $1 }')
if [ -z "$hb_pg_version" ]; then
    hb_pg_version=$(ls /usr/lib/postgresql | sort -n | tail -1)
    pg_createcluster "$hb_pg_version" main >/dev/null
fi
hb_pg_cluster=$(pg_lsclusters -h | awk 'NR == 1 { print $2 }')
if ! pg_lsclusters -h | awk 'NR == 1 { print $4 }' | grep -q online; then
    pg_ctlcluster "$hb_pg_version" "$hb_pg_cluster" start
fi
su postgres -c "psql -q -v ON_ERROR_STOP=1" <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hongbao') THEN
    CREATE ROLE hongbao LOGIN CREATEDB PASSWORD 'hongbao';
  END IF;
END $$;
SQL
hb_pg_port=$(pg_lsclusters -h | awk 'NR == 1 { print $3 }')
export HONGBAO_TEST_PG="postgres://hongbao:hongbao@127.0.0.1:${hb_pg_port}/postgres"
echo "PostgreSQL $hb_pg_version/$hb_pg_cluster on 127.0.0.1:$hb_pg_port: HONGBAO_TEST_PG=$HONGBAO_TEST_PG"
unset hb_pg_version hb_pg_cluster hb_pg_port
if ! (exec 3<>/dev/tcp/127.0.0.1/14222) 2>/dev/null; then
    mkdir -p /tmp/hongbao-nats
    nohup nats-server -js -a 127.0.0.1 -p 14222 -sd /tmp/hongbao-nats \
        >/tmp/hongbao-nats/server.log 2>&1 &
    for _ in $(seq 1 50); do
        (exec 3<>/dev/tcp/127.0.0.1/14222) 2>/dev/null && break
        sleep 0.1
    done
fi
export HONGBAO_TEST_NATS="nats://127.0.0.1:14222"
echo "nats-server (JetStream) on 127.0.0.1:14222: HONGBAO_TEST_NATS=$HONGBAO_TEST_NATS"
