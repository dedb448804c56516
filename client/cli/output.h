// What the `plume` subcommands print: the text forms of a matrix's and a
// K/V cache's info, GEMV / attention results, and the --json documents.
//
// --json prints one JSON document on stdout (errors still go to stderr as
// `error: CODE: message`, with nothing on stdout). Its keys are stable: every
// key is always present (null or [] when there is nothing to say), names are
// snake_case as in the text output, enums are the short names the CLI takes
// (e4m3, row, f16, ...), sizes are integers.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "plume/client/client.h"
#include "plume/io/array.h"

namespace plume::cli {

using Json = nlohmann::ordered_json;

// "2024-05-01T12:00:00.123Z"; "-" for 0.
std::string FormatTime(int64_t unix_ms);

// `plume info` / `plume kv info`: one "key: value" line each.
void PrintMatrixInfo(const v1::MatrixInfo& m);
void PrintKvInfo(const v1::KVInfo& c);

// The --json forms of the same.
Json MatrixInfoJson(const v1::MatrixInfo& m);
Json KvInfoJson(const v1::KVInfo& c);
// {"file", "file_dtype", "dtype", "shape"}: an input array read from
// `file`, which held `file_dtype` (f64 when it was converted to f32 on the
// way: ReadFloatNpy).
Json ArrayJson(const std::string& file, const std::string& file_dtype, const io::Array& a);

// Prints `j` on stdout, indented, with a final newline.
void PrintJson(const Json& j);

// Writes a GEMV / attention result to `output` (.npy; bf16 is widened to
// f32) or, when that is empty, prints it one line per last-dimension row.
// With `summary`, prints instead that document with "output" ({"file",
// "dtype", "shape"}) and "values" (the result as nested arrays, null when
// written to a file; non-finite values are null) added.
// Returns the exit code.
int EmitResult(const HostTensor& y, const std::string& output, Json* summary);

}  // namespace plume::cli
