"""The LLM client layer under synthesis and mining: endpoint settings, the online and batch back ends (retries,
rate limits, budgets), the journal every answer is written to before anything reads it, the output lock, and the
structured-output detection. It knows nothing of what is asked: the stages above build the requests."""
