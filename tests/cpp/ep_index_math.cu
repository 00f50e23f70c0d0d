// Host-side driver for the dispatch kernel's receive index math (ep/recv_index.cuh). stdin:
// "R L alignment", R counts rows of 2 + L ints, then "src id pos" queries to EOF. stdout: the
// token offsets (R + 1), the expert segment bases (L + 1), then one expanded row per query.
#include <cstdint>
#include <iostream>
#include <vector>

#include "deepseek_ext/ep/recv_index.cuh"

int main() {
  int num_ranks = 0, local_experts = 0;
  int64_t alignment = 1;
  std::cin >> num_ranks >> local_experts >> alignment;
  const int cols = 2 + local_experts;
  std::vector<int32_t> counts(static_cast<size_t>(num_ranks) * cols);
  for (auto& c : counts) std::cin >> c;
  std::vector<int> ints(dx::ep::recv_tables_ints(num_ranks, local_experts));
  const dx::ep::RecvTables tables = dx::ep::recv_tables_in(ints.data(), num_ranks, local_experts);
  dx::ep::fill_recv_tables(counts.data(), cols, num_ranks, local_experts, alignment, tables);
  for (int s = 0; s <= num_ranks; ++s) std::cout << tables.tok_off[s] << (s < num_ranks ? ' ' : '\n');
  for (int e = 0; e <= local_experts; ++e) std::cout << tables.exp_base[e] << (e < local_experts ? ' ' : '\n');
  int src = 0, id = 0, pos = 0;
  while (std::cin >> src >> id >> pos) std::cout << dx::ep::expanded_row(tables, local_experts, src, id, pos) << '\n';
  return 0;
}
