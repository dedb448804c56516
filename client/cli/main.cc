// plume: the command-line client. See `plume --help`.
//
// Flags are spelled in kebab-case (--output-dtype) in every subcommand, and
// each is accepted with underscores too (--output_dtype): Names() makes both.
// Older spellings stay accepted where they existed (attend --out-dtype).
#include <CLI/CLI.hpp>

#include <initializer_list>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "bench.h"
#include "commands.h"
#include "plume/build_info.h"

namespace {

// "--output-dtype,--output_dtype,--out-dtype,--out_dtype" from
// {"output-dtype", "out-dtype"}; a single letter gives "-o".
std::string Names(std::initializer_list<std::string_view> names) {
  std::string out;
  auto add = [&out](const std::string& n) {
    if (!out.empty()) out += ",";
    out += n;
  };
  for (std::string_view view : names) {
    const std::string n(view);
    if (n.size() == 1) {
      add(absl::StrCat("-", n));
      continue;
    }
    add(absl::StrCat("--", n));
    const std::string underscored = absl::StrReplaceAll(n, {{"-", "_"}});
    if (underscored != n) add(absl::StrCat("--", underscored));
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace plume::cli;
  CLI::App app{"plume: upload FP8 matrices to a plume server and run GEMV on them", "plume"};
  app.require_subcommand(1);
  app.fallthrough();  // global options may also follow the subcommand
  // Version, commit, build type and backends of this build (the server's
  // own: `plume-server --version`).
  app.set_version_flag("--version", [] { return plume::VersionText("plume"); },
                       "print the version, commit, build type and backends of this build, and exit");

  GlobalFlags g;
  app.add_option(Names({"server"}), g.server, "server address HOST:PORT")->capture_default_str();
  app.add_option(Names({"timeout"}), g.timeout_s,
                 "deadline in seconds of each call; for streamed uploads (upload, upload-model, kv upload) "
                 "of each message, and of the answer after the last one")
      ->capture_default_str();
  app.add_option(Names({"upload-deadline"}), g.upload_deadline_s,
                 "streamed uploads: a deadline in seconds for the whole upload (default: none, only --timeout "
                 "per message)");
  app.add_flag(Names({"tls"}), g.tls, "use TLS (system roots unless --tls-ca)");
  app.add_option(Names({"tls-ca"}), g.tls_ca, "PEM file of CA certificates to trust (implies --tls)");
  app.add_option(Names({"tls-cert"}), g.tls_cert, "PEM client certificate for mutual TLS (implies --tls)");
  app.add_option(Names({"tls-key"}), g.tls_key, "PEM key of --tls-cert");
  app.add_option(Names({"token"}), g.token, "bearer token sent as `authorization: Bearer ...`")
      ->envname("PLUME_TOKEN");
  app.add_option(Names({"token-file"}), g.token_file, "file holding the bearer token");

  int rc = kExitOk;
  const char* kJsonHelp = "print one JSON document on stdout instead of text";

  UploadFlags up;
  auto* upload = app.add_subcommand(
      "upload", "upload a matrix from a .npy or .safetensors file (FP8 tensors go pre-packed with their scales)");
  upload->add_option("NAME", up.name, "matrix name")->required();
  upload->add_option("FILE", up.file,
                     ".npy (f32/f16, or f64 converted to f32; 2-D, C order) or .safetensors file (F32/F16/BF16, "
                     "or F8_E4M3/F8_E5M2 with a scale tensor)")
      ->check(CLI::ExistingFile);
  upload->add_option(Names({"format"}), up.format,
                     "FP8 format of F32/F16/BF16 sources (default e4m3) and of --codes; an FP8 tensor's is its dtype")
      ->check(CLI::IsMember({"e4m3", "e5m2"}));
  upload->add_option(Names({"scale"}), up.scale,
                     "scaling mode of F32/F16/BF16 sources (default row); for FP8 sources only 'none' "
                     "(no scale tensor), else the scale tensor's shape picks it")
      ->check(CLI::IsMember({"none", "tensor", "row", "block128", "block128x128"}));
  upload->add_option(Names({"tensor"}), up.tensor, "tensor KEY in a .safetensors file");
  upload->add_option(Names({"scale-tensor"}), up.scale_tensor,
                     "scale tensor KEY of an FP8 tensor (default: KEY_scale, KEY_scale_inv, or for "
                     "P.weight P.weight_scale / P.weight_scale_inv)");
  upload->add_option(Names({"codes"}), up.codes,
                     "raw FP8 codes: a [rows, cols] uint8 .npy (instead of FILE; needs --format)")
      ->check(CLI::ExistingFile);
  upload->add_option(Names({"scales"}), up.scales,
                     "float32 .npy of the --codes' scales: [] or [1] tensor, [rows] or [rows,1] row, "
                     "[rows,ceil(cols/128)] block128, [ceil(rows/128),ceil(cols/128)] block128x128")
      ->check(CLI::ExistingFile);
  upload->add_flag(Names({"non-saturating"}), up.non_saturating,
                   "overflow becomes NaN (E4M3) / inf (E5M2) instead of saturating");
  upload->add_option(Names({"placement"}), up.placement,
                     "where a multi-GPU server keeps it: auto, single, sharded or replicated")
      ->check(CLI::IsMember({"auto", "single", "sharded", "replicated"}))
      ->capture_default_str();
  upload->add_flag(Names({"json"}), up.json, kJsonHelp);
  upload->callback([&] { rc = RunUpload(g, up); });

  UploadModelFlags um;
  auto* upload_model = app.add_subcommand(
      "upload-model", "upload every matching 2-D tensor of a checkpoint (.safetensors or its index .json); "
                      "a rerun skips what is resident with the same content hash");
  upload_model->add_option("FILE", um.file, ".safetensors file, or model.safetensors.index.json of a sharded one")
      ->required()
      ->check(CLI::ExistingFile);
  upload_model->add_option(Names({"match"}), um.match,
                           "regular expression searched in tensor names (default: names ending in \"weight\"); "
                           "scale tensors are never uploaded as matrices");
  upload_model->add_option(Names({"prefix"}), um.prefix, "prepended to each tensor name to make the matrix name");
  upload_model->add_option(Names({"format"}), um.format, "FP8 format for F32/F16/BF16 tensors (default e4m3)")
      ->check(CLI::IsMember({"e4m3", "e5m2"}));
  upload_model->add_option(Names({"scale"}), um.scale, "scaling mode for F32/F16/BF16 tensors (default row)")
      ->check(CLI::IsMember({"none", "tensor", "row", "block128", "block128x128"}));
  upload_model->add_flag(Names({"non-saturating"}), um.non_saturating,
                         "F32/F16/BF16 tensors: overflow becomes NaN (E4M3) / inf (E5M2) instead of saturating");
  upload_model->add_option(Names({"placement"}), um.placement,
                           "where a multi-GPU server keeps each: auto, single, sharded or replicated")
      ->check(CLI::IsMember({"auto", "single", "sharded", "replicated"}))
      ->capture_default_str();
  upload_model->add_flag(Names({"replace"}), um.replace,
                         "delete and re-upload a resident matrix of the same name whose content hash differs");
  upload_model->callback([&] { rc = RunUploadModel(g, um); });

  bool list_json = false;
  auto* list = app.add_subcommand("list", "list the resident matrices");
  list->add_flag(Names({"json"}), list_json, kJsonHelp);
  list->callback([&] { rc = RunList(g, list_json); });

  std::string info_name;
  bool info_json = false;
  auto* info = app.add_subcommand("info", "show everything about one matrix");
  info->add_option("NAME", info_name, "matrix name")->required();
  info->add_flag(Names({"json"}), info_json, kJsonHelp);
  info->callback([&] { rc = RunInfo(g, info_name, info_json); });

  std::string delete_name;
  auto* del = app.add_subcommand("delete", "delete a matrix");
  del->add_option("NAME", delete_name, "matrix name")->required();
  del->callback([&] { rc = RunDelete(g, delete_name); });

  GemvFlags gf;
  auto* gemv = app.add_subcommand("gemv", "y = W x for a 1-D [cols] or 2-D [batch, cols] .npy input");
  gemv->add_option("NAME", gf.name, "matrix name")->required();
  gemv->add_option("INPUT", gf.input, "input .npy (f32 or f16; f64 is converted to f32)")
      ->required()
      ->check(CLI::ExistingFile);
  gemv->add_option(Names({"o", "output"}), gf.output, "write the result to this .npy instead of printing it");
  gemv->add_option(Names({"output-dtype", "out-dtype"}), gf.output_dtype,
                   "result dtype (bf16 results are saved as f32)")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}))
      ->capture_default_str();
  gemv->add_flag(Names({"json"}), gf.json,
                 "print a JSON summary (input, output, seconds; the values unless -o) instead of the values");
  gemv->callback([&] { rc = RunGemv(g, gf); });

  // K/V caches and attention.
  auto* kv = app.add_subcommand("kv", "K/V caches: upload, append, list, info, delete");
  kv->require_subcommand(1);
  KvUploadFlags kvu;
  auto* kv_upload = kv->add_subcommand("upload", "upload K and V ([kv_heads, seq, head_dim] .npy files) as a new cache");
  kv_upload->add_option("NAME", kvu.name, "cache name")->required();
  kv_upload->add_option("K", kvu.k_file, "K .npy (f32/f16, or f64 converted to f32; 3-D)")
      ->required()
      ->check(CLI::ExistingFile);
  kv_upload->add_option("V", kvu.v_file, "V .npy (same shape and dtype as K)")->required()->check(CLI::ExistingFile);
  kv_upload->add_option(Names({"format"}), kvu.format, "FP8 format")
      ->check(CLI::IsMember({"e4m3", "e5m2"}))
      ->capture_default_str();
  kv_upload->add_option(Names({"scale"}), kvu.scale, "scales: none, tensor, head, or block (per head per 64 tokens)")
      ->check(CLI::IsMember({"none", "tensor", "head", "block"}))
      ->capture_default_str();
  kv_upload->add_flag(Names({"non-saturating"}), kvu.non_saturating,
                      "overflow becomes NaN (E4M3) / inf (E5M2) instead of saturating");
  kv_upload->add_flag(Names({"json"}), kvu.json, kJsonHelp);
  kv_upload->callback([&] { rc = RunKvUpload(g, kvu); });

  std::string kva_name, kva_k, kva_v;
  bool kva_json = false;
  auto* kv_append = kv->add_subcommand("append", "append tokens ([kv_heads, tokens, head_dim] .npy files)");
  kv_append->add_option("NAME", kva_name, "cache name")->required();
  kv_append->add_option("K", kva_k, "K .npy")->required()->check(CLI::ExistingFile);
  kv_append->add_option("V", kva_v, "V .npy")->required()->check(CLI::ExistingFile);
  kv_append->add_flag(Names({"json"}), kva_json, kJsonHelp);
  kv_append->callback([&] { rc = RunKvAppend(g, kva_name, kva_k, kva_v, kva_json); });

  bool kv_list_json = false;
  auto* kv_list = kv->add_subcommand("list", "list the K/V caches");
  kv_list->add_flag(Names({"json"}), kv_list_json, kJsonHelp);
  kv_list->callback([&] { rc = RunKvList(g, kv_list_json); });

  std::string kv_info_name;
  bool kv_info_json = false;
  auto* kv_info = kv->add_subcommand("info", "show everything about one cache");
  kv_info->add_option("NAME", kv_info_name, "cache name")->required();
  kv_info->add_flag(Names({"json"}), kv_info_json, kJsonHelp);
  kv_info->callback([&] { rc = RunKvInfo(g, kv_info_name, kv_info_json); });

  std::string kv_delete_name;
  auto* kv_delete = kv->add_subcommand("delete", "delete a cache");
  kv_delete->add_option("NAME", kv_delete_name, "cache name")->required();
  kv_delete->callback([&] { rc = RunKvDelete(g, kv_delete_name); });

  AttendFlags af;
  auto* attend = app.add_subcommand("attend", "softmax(scale Q K^T) V for a [batch, heads, q_len, head_dim] .npy query");
  attend->add_option("NAME", af.name, "cache name")->required();
  attend->add_option("Q", af.input, "query .npy (f32 or f16, or f64 converted to f32; 4-D)")
      ->required()
      ->check(CLI::ExistingFile);
  attend->add_option(Names({"o", "output"}), af.output, "write the result to this .npy instead of printing it");
  attend->add_flag(Names({"causal"}), af.causal, "the queries are the last q_len positions of the sequence");
  attend->add_option(Names({"scale"}), af.scale, "softmax scale (default 1/sqrt(head_dim))");
  attend->add_option(Names({"output-dtype", "out-dtype"}), af.output_dtype,
                     "result dtype (bf16 results are saved as f32)")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}))
      ->capture_default_str();
  attend->add_flag(Names({"json"}), af.json,
                   "print a JSON summary (query, output, seconds; the values unless -o) instead of the values");
  attend->callback([&] { rc = RunAttend(g, af); });

  BenchFlags bf;
  auto* bench = app.add_subcommand(
      "bench", "load generator: throughput, latency percentiles and the server's queue/kernel split");
  bench->add_option("MATRIX", bf.matrix, "matrix to run GEMV on (with --echo: only its cols are used)");
  bench->add_option(Names({"mode"}), bf.mode, "stream (GemvStream/EchoStream) or unary (Gemv/Echo)")
      ->check(CLI::IsMember({"stream", "unary"}))
      ->capture_default_str();
  bench->add_option(Names({"concurrency"}), bf.concurrency, "closed loop: requests in flight, a comma-separated sweep")
      ->capture_default_str();
  bench->add_option(Names({"rate"}), bf.rate,
                    "open loop: requests/s (comma-separated sweep); overrides --concurrency");
  bench->add_option(Names({"dtype"}), bf.dtype, "vector dtype")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}))
      ->capture_default_str();
  bench->add_option(Names({"output-dtype", "out-dtype"}), bf.output_dtype, "GEMV result dtype (default: --dtype)")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}));
  bench->add_option(Names({"batch"}), bf.batch, "vectors per request")->capture_default_str();
  bench->add_flag(Names({"echo"}), bf.echo,
                  "measure the Echo ceiling: the same payloads through DiagnosticsService.Echo");
  bench->add_option(Names({"cols"}), bf.cols, "--echo without a MATRIX: elements per vector");
  bench->add_option(Names({"window-ms"}), bf.window_ms, "measurement window")->capture_default_str();
  bench->add_option(Names({"max-windows"}), bf.max_windows, "measured windows per step at most (warm-up not counted)")
      ->capture_default_str();
  bench->add_option(Names({"max-seconds"}), bf.max_seconds, "seconds per step at most, warm-up included")
      ->capture_default_str();
  bench->add_option(Names({"stability"}), bf.stability,
                    "a step is stable once its last 3 windows are within this fraction")
      ->capture_default_str();
  bench->add_option(Names({"connections"}), bf.connections, "gRPC connections to spread the load over")
      ->capture_default_str();
  bench->add_option(Names({"streams"}), bf.streams,
                    "stream mode: streams per step (0: concurrency/8, 1..32; open loop 16)")
      ->capture_default_str();
  bench->add_option(Names({"max-outstanding"}), bf.max_outstanding, "open loop: requests in flight at most")
      ->capture_default_str();
  bench->add_option(Names({"seed"}), bf.seed, "seed of the random input vectors")->capture_default_str();
  bench->add_option(Names({"metrics-url"}), bf.metrics_url,
                    "server's Prometheus endpoint, http://HOST:PORT/metrics (queue/kernel split, mean batch)");
  bench->add_option(Names({"metrics-user"}), bf.metrics_user, "basic-auth user of --metrics-url");
  bench->add_option(Names({"metrics-password-file"}), bf.metrics_password_file,
                    "file holding the basic-auth password of --metrics-url");
  bench->add_option(Names({"json"}), bf.json, "also write every number to this JSON FILE (the table stays on stdout)");
  bench->add_flag(Names({"progress"}), bf.progress, "live progress on stderr even when it is not a terminal");
  bench->callback([&] { rc = RunBench(g, bf); });

  std::string health_service;
  bool health_json = false;
  auto* health = app.add_subcommand("health", "grpc.health.v1 check; exit 0 when SERVING");
  health->add_option(Names({"service"}), health_service, "service name (default: the whole server)");
  health->add_flag(Names({"json"}), health_json, kJsonHelp);
  health->callback([&] { rc = RunHealth(g, health_service, health_json); });

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    absl::FPrintF(stderr, "error: INVALID_ARGUMENT: %s\n", e.what());
    absl::FPrintF(stderr, "run `plume --help` for usage\n");
    return kExitUsage;
  }
  return rc;
}
