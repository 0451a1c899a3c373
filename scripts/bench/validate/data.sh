#!/usr/bin/env bash
# The table pair of the validate benchmark (scripts/bench/validate.sh): MariaDB TABLE (source) and PostgreSQL
# TABLE (target), ROWS rows each, generated inside each server from the same integer-only expressions (MariaDB's
# sequence engine seq_1_to_N, PostgreSQL generate_series), so no row crosses the network. ASCII text only.
#
# usage: data.sh build TABLE ROWS          drop and create both tables, identical (both servers in parallel)
#        data.sh seed TABLE ROWS KEYS_FILE  make the 10 differences on the PostgreSQL side and write their keys,
#                                           one "<what>\t<id>" line each
#        data.sh keys ROWS                  print those lines only (the keys are a function of ROWS)
#        data.sh drop TABLE                 drop both tables
# env: PRODUCTION_MYSQL_URL (mysql://root@127.0.0.1:3306/test), WAREHOUSE_URL (postgres://postgres@127.0.0.1:5432/test),
#      CHUNK (rows per MariaDB INSERT … SELECT, 1000000)
#
# Columns, x = the sequence value:
#   id          BIGINT PK                     x
#   a           INT                           (x*7919) % 1000003
#   b           INT NULL                      NULL if x%10=0, else (x*31) % 65536
#   c           BIGINT                        x*1000 + x%7
#   amount      DECIMAL(12,2) / numeric(12,2) ((x*37) % 10000000) * 0.01
#   name        VARCHAR(64)                   'n' x '-' left(md5(x), 8 + x%24)
#   created_at  TIMESTAMP / timestamptz NULL  NULL if x%97=0, else unix time 1577836800 + x*13 (UTC)
#   note        TEXT NULL                     NULL if x%3=0, '' if x%3=1, else 'note ' x (+ ' ' if x%5=0)
# About 90 bytes a row: 10,000,000 rows take about 1 GB on each side.
set -euo pipefail
MY=${PRODUCTION_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}
PG=${WAREHOUSE_URL:-postgres://postgres@127.0.0.1:5432/test}
CHUNK=${CHUNK:-1000000}

die() {
  echo "data.sh: $*" >&2
  exit 2
}
now_ms() { date +%s%3N; }
secs() { awk -v ms="$1" 'BEGIN { printf "%.2f", ms / 1000 }'; }

re='^mysql://([^:@/]+)(:([^@/]*))?@([^:/]+)(:([0-9]+))?/([^/?]+)'
[[ $MY =~ $re ]] || die "cannot read the MySQL URL $MY (mysql://user[:password]@host[:port]/database)"
my_args=(--protocol=tcp -h"${BASH_REMATCH[4]}" -P"${BASH_REMATCH[6]:-3306}" -u"${BASH_REMATCH[1]}"
  --default-character-set=utf8mb4 "${BASH_REMATCH[7]}")
my_pass=${BASH_REMATCH[3]}
my() {
  if [[ -n $my_pass ]]; then MYSQL_PWD=$my_pass mariadb "${my_args[@]}" "$@"; else mariadb "${my_args[@]}" "$@"; fi
}
pg() { psql -X -q -v ON_ERROR_STOP=1 "$PG" "$@"; }

check_table() { [[ $1 =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "bad table name '$1'"; }
check_rows() {
  if ! [[ $1 =~ ^[0-9]+$ ]] || (($1 < 1000)); then die "ROWS must be a number >= 1000, not '$1'"; fi
}

# The seeded differences: keys spread over the table, nudged so the NULL-related changes hit rows where they
# change something.
keys() {
  local rows=$1 k
  K() { echo $((rows * $1 / 11 + 7)); }
  local k_ts
  k_ts=$(K 4)
  ((k_ts % 97 != 0)) || k_ts=$((k_ts + 1)) # created_at is NULL when id % 97 = 0
  printf 'a_changed\t%s\n' "$(K 1)"
  printf 'amount_changed\t%s\n' "$(K 2)"
  printf 'name_changed\t%s\n' "$(K 3)"
  printf 'created_at_changed\t%s\n' "$k_ts"
  k=$(K 5)
  printf 'note_nonnull_to_null\t%s\n' $((k % 3 == 0 ? k + 1 : k)) # note is NULL when id % 3 = 0
  k=$(K 6)
  printf 'note_null_to_empty\t%s\n' $((k - k % 3))
  k=$(K 7)
  printf 'b_nonnull_to_null\t%s\n' $((k % 10 == 0 ? k + 1 : k)) # b is NULL when id % 10 = 0
  printf 'name_case_only\t%s\n' "$(K 8)"                          # equal under utf8mb4_general_ci
  printf 'missing_in_target\t%s\n' "$(K 9)"
  printf 'only_in_target\t%s\n' $((rows + 1000))
}

build_mariadb() {
  local table=$1 rows=$2 s lo hi
  s=$(now_ms)
  my -N -e "SELECT COUNT(*) FROM seq_1_to_3" >/dev/null 2>&1 || die "MariaDB at $MY: no connection or no SEQUENCE engine"
  my <<SQL
DROP TABLE IF EXISTS \`$table\`;
CREATE TABLE \`$table\` (
  id BIGINT NOT NULL PRIMARY KEY,
  a INT NOT NULL,
  b INT NULL,
  c BIGINT NOT NULL,
  amount DECIMAL(12,2) NOT NULL,
  name VARCHAR(64) NOT NULL,
  created_at TIMESTAMP NULL DEFAULT NULL,
  note TEXT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;
SQL
  # one transaction per chunk, in key order (appends to the clustered index)
  lo=1
  while ((lo <= rows)); do
    hi=$((lo + CHUNK - 1))
    ((hi <= rows)) || hi=$rows
    my <<SQL
SET SESSION time_zone='+00:00', unique_checks=0, foreign_key_checks=0;
INSERT INTO \`$table\`
SELECT seq,
       (seq*7919) % 1000003,
       IF(seq % 10 = 0, NULL, (seq*31) % 65536),
       seq*1000 + seq % 7,
       ((seq*37) % 10000000) * 0.01,
       CONCAT('n', seq, '-', LEFT(MD5(seq), 8 + seq % 24)),
       IF(seq % 97 = 0, NULL, FROM_UNIXTIME(1577836800 + seq*13)),
       CASE seq % 3 WHEN 0 THEN NULL WHEN 1 THEN '' ELSE CONCAT('note ', seq, IF(seq % 5 = 0, ' ', '')) END
FROM seq_${lo}_to_${hi};
SQL
    lo=$((hi + 1))
  done
  my -e "ANALYZE TABLE \`$table\`" >/dev/null
  echo "  mariadb: $rows rows in $(secs $(($(now_ms) - s))) s"
}

build_postgres() {
  local table=$1 rows=$2 s
  s=$(now_ms)
  # created and filled in one transaction (no WAL for the rows when wal_level=minimal), primary key built after
  # the load; VACUUM sets the hint bits and the visibility map, so the first reader does not pay for them
  pg <<SQL
SET synchronous_commit = off;
SET client_min_messages = warning;
SET maintenance_work_mem = '256MB';
DROP TABLE IF EXISTS "$table";
BEGIN;
CREATE TABLE "$table" (
  id bigint NOT NULL,
  a integer NOT NULL,
  b integer,
  c bigint NOT NULL,
  amount numeric(12,2) NOT NULL,
  name varchar(64) NOT NULL,
  created_at timestamptz,
  note text
);
INSERT INTO "$table"
SELECT x,
       (x*7919) % 1000003,
       CASE WHEN x % 10 = 0 THEN NULL ELSE (x*31) % 65536 END,
       x*1000 + x % 7,
       ((x*37) % 10000000) * 0.01,
       'n' || x || '-' || left(md5(x::text), (8 + x % 24)::int),
       CASE WHEN x % 97 = 0 THEN NULL ELSE to_timestamp(1577836800 + x*13) END,
       CASE x % 3 WHEN 0 THEN NULL WHEN 1 THEN '' ELSE 'note ' || x || CASE WHEN x % 5 = 0 THEN ' ' ELSE '' END END
FROM generate_series(1::bigint, $rows::bigint) AS x;
COMMIT;
ALTER TABLE "$table" ADD PRIMARY KEY (id);
VACUUM ANALYZE "$table";
SQL
  echo "  postgresql: $rows rows in $(secs $(($(now_ms) - s))) s"
}

seed() {
  local table=$1 rows=$2 out=$3 sql
  keys "$rows" >"$out"
  declare -A k
  while IFS=$'\t' read -r what id; do k[$what]=$id; done <"$out"
  sql=$(
    cat <<SQL
SET client_min_messages = warning;
BEGIN;
UPDATE "$table" SET a = a + 1                                     WHERE id = ${k[a_changed]};
UPDATE "$table" SET amount = amount + 0.01                        WHERE id = ${k[amount_changed]};
UPDATE "$table" SET name = name || 'x'                            WHERE id = ${k[name_changed]};
UPDATE "$table" SET created_at = created_at + interval '1 second' WHERE id = ${k[created_at_changed]};
UPDATE "$table" SET note = NULL                                   WHERE id = ${k[note_nonnull_to_null]};
UPDATE "$table" SET note = ''                                     WHERE id = ${k[note_null_to_empty]};
UPDATE "$table" SET b = NULL                                      WHERE id = ${k[b_nonnull_to_null]};
UPDATE "$table" SET name = 'N' || substr(name, 2)                 WHERE id = ${k[name_case_only]};
DELETE FROM "$table"                                              WHERE id = ${k[missing_in_target]};
INSERT INTO "$table" VALUES (${k[only_in_target]}, 1, 2, 3, 4.00, 'extra', '2021-01-01 00:00:00+00', 'extra row');
COMMIT;
VACUUM ANALYZE "$table";
SQL
  )
  # every statement must change exactly one row: count the command tags (psql without -q prints them)
  local tags
  tags=$(psql -X -v ON_ERROR_STOP=1 "$PG" <<<"$sql")
  [[ $(grep -c -E '^(UPDATE 1|DELETE 1|INSERT 0 1)$' <<<"$tags") == 10 ]] ||
    die "seeding $table: not every statement changed one row:"$'\n'"$tags"
}

drop() {
  local table=$1 rc=0
  my -e "DROP TABLE IF EXISTS \`$table\`" || rc=1
  pg -c "SET client_min_messages = warning" -c "DROP TABLE IF EXISTS \"$table\"" || rc=1
  return $rc
}

cmd=${1:-}
case $cmd in
build)
  (($# == 3)) || die "usage: data.sh build TABLE ROWS"
  check_table "$2"
  check_rows "$3"
  build_mariadb "$2" "$3" &
  p_my=$!
  build_postgres "$2" "$3" &
  p_pg=$!
  rc=0
  wait "$p_my" || rc=1
  wait "$p_pg" || rc=1
  exit $rc
  ;;
seed)
  (($# == 4)) || die "usage: data.sh seed TABLE ROWS KEYS_FILE"
  check_table "$2"
  check_rows "$3"
  seed "$2" "$3" "$4"
  ;;
keys)
  (($# == 2)) || die "usage: data.sh keys ROWS"
  check_rows "$2"
  keys "$2"
  ;;
drop)
  (($# == 2)) || die "usage: data.sh drop TABLE"
  check_table "$2"
  drop "$2"
  ;;
*) die "usage: data.sh build|seed|keys|drop … (see the header)" ;;
esac
