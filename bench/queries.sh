# The Weir form of the queries that bench/run.sh and bench/compare.sh both run, over a source
# named `payments`; sourced, never run. Each script adds its own joins, enrichments and patterns.
#
# shared_query NAME: prints the query's `streams:` for spec.pipeline, or returns 1 for a name it
# does not define.
shared_query() {
  local q
  case $1 in
    filter_project) q='{from: payments, where: "amount > 100 AND status = '"'approved'"'", select: {id: id, card_id: card_id, amount: amount, ts: ts}}' ;;
    tumbling_1m) q='{from: payments, keyBy: [card_id], window: {tumbling: 1m}, aggregate: {n: "count(*)", total: "sum(amount)", max_amount: "max(amount)"}}' ;;
    sliding_5m_1m) q='{from: payments, keyBy: [card_id], window: {sliding: {size: 5m, slide: 1m}}, aggregate: {n: "count(*)", total: "sum(amount)"}}' ;;
    session_2m) q='{from: payments, keyBy: [card_id], window: {session: {gap: 2m}}, aggregate: {n: "count(*)", total: "sum(amount)"}}' ;;
    *) return 1 ;;
  esac
  printf '    streams:\n      q: %s\n' "$q"
}
