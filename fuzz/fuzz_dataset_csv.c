/*
 * fuzz_dataset_csv.c — fuzz target for the dataset loader's CSV reader
 * (dx_dataset_parse of a "*.csv" name, example.h); the body and invariants
 * are fuzz_dataset.c's.
 */
#define FUZZ_DATASET_NAME "fuzz.csv"
#include "fuzz_dataset.c"
