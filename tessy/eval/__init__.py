"""`tessy eval`: pass@1 on code and math benchmarks.

`verdicts` names what can happen to a sample, `sandbox` runs model-written code, `checkers` judges a
test's output, `livecodebench` reads LiveCodeBench rows, `mathcheck` compares math answers, and
`evaluate` is the command itself.
"""
