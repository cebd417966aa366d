"""Pure graph analyses and rewrites, each ``(GraphModule, BackendSettings) -> GraphModule``.

Analyses record their typed results in ``gm.meta`` under the keys below; no pass keeps
runtime state.
"""

CHAIN_META_KEY = "cachedit_fx.block_chain"
PARTITION_META_KEY = "cachedit_fx.partition"
BLOCKWISE_META_KEY = "cachedit_fx.blockwise"
COMPILE_REPORT_META_KEY = "cachedit_fx.compile_report"
SHARDING_META_KEY = "cachedit_fx.sharding"
IN_GRAPH_META_KEY = "cachedit_fx.in_graph_step"
ONE_PROGRAM_META_KEY = "cachedit_fx.one_program"
