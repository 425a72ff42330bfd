-- ccgate: postgresql only
-- ccgate_reserve_v1 planned its budget query afresh on every call: its arrays are parameters, so each custom plan
-- knew their length and the plan cache never chose the generic plan (pg_stat_statements: 0.3 ms of planning per
-- admission, ~25 % of the function's time, inside the section that holds the team's budget rows). The generic
-- plan is the same index plan. Only changes a setting of the function: the previous release calls it unchanged.
ALTER FUNCTION ccgate_reserve_v1(
    TEXT, TEXT, TEXT, TEXT, TEXT[], TEXT[], TEXT[], TEXT[], BIGINT, TEXT, TEXT, TEXT, TEXT, BOOLEAN, TEXT
) SET plan_cache_mode = force_generic_plan;
