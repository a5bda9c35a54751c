"""The Hub layout every stage reads and writes: the row schema of the six families, the writer (parquet per config
and a dataset card) and the push to the Hub. It sits below the stages, so that none imports another's modules."""
