// plume: the command-line client. See `plume --help`.
#include <CLI/CLI.hpp>

#include "absl/strings/str_format.h"
#include "commands.h"

int main(int argc, char** argv) {
  using namespace plume::cli;
  CLI::App app{"plume: upload FP8 matrices to a plume server and run GEMV on them", "plume"};
  app.require_subcommand(1);
  app.fallthrough();  // global options may also follow the subcommand

  GlobalFlags g;
  app.add_option("--server", g.server, "server address HOST:PORT")->capture_default_str();
  app.add_option("--timeout", g.timeout_s, "per-call deadline in seconds")->capture_default_str();
  app.add_flag("--tls", g.tls, "use TLS (system roots unless --tls-ca)");
  app.add_option("--tls-ca,--tls_ca", g.tls_ca, "PEM file of CA certificates to trust (implies --tls)");
  app.add_option("--tls-cert,--tls_cert", g.tls_cert, "PEM client certificate for mutual TLS (implies --tls)");
  app.add_option("--tls-key,--tls_key", g.tls_key, "PEM key of --tls-cert");
  app.add_option("--token", g.token, "bearer token sent as `authorization: Bearer ...`")
      ->envname("PLUME_TOKEN");
  app.add_option("--token-file,--token_file", g.token_file, "file holding the bearer token");

  int rc = kExitOk;

  UploadFlags up;
  auto* upload = app.add_subcommand("upload", "upload a matrix from a .npy or .safetensors file");
  upload->add_option("NAME", up.name, "matrix name")->required();
  upload->add_option("FILE", up.file, ".npy (f32/f16, 2-D, C order) or .safetensors file")
      ->required()
      ->check(CLI::ExistingFile);
  upload->add_option("--format", up.format, "FP8 format")
      ->check(CLI::IsMember({"e4m3", "e5m2"}))
      ->capture_default_str();
  upload->add_option("--scale", up.scale, "scaling mode")
      ->check(CLI::IsMember({"none", "tensor", "row", "block128"}))
      ->capture_default_str();
  upload->add_option("--tensor", up.tensor, "tensor KEY in a .safetensors file");
  upload->add_flag("--non-saturating", up.non_saturating,
                   "overflow becomes NaN (E4M3) / inf (E5M2) instead of saturating");
  upload->callback([&] { rc = RunUpload(g, up); });

  auto* list = app.add_subcommand("list", "list the resident matrices");
  list->callback([&] { rc = RunList(g); });

  std::string info_name;
  auto* info = app.add_subcommand("info", "show everything about one matrix");
  info->add_option("NAME", info_name, "matrix name")->required();
  info->callback([&] { rc = RunInfo(g, info_name); });

  std::string delete_name;
  auto* del = app.add_subcommand("delete", "delete a matrix");
  del->add_option("NAME", delete_name, "matrix name")->required();
  del->callback([&] { rc = RunDelete(g, delete_name); });

  GemvFlags gf;
  auto* gemv = app.add_subcommand("gemv", "y = W x for a 1-D [cols] or 2-D [batch, cols] .npy input");
  gemv->add_option("NAME", gf.name, "matrix name")->required();
  gemv->add_option("INPUT", gf.input, "input .npy (f32 or f16)")->required()->check(CLI::ExistingFile);
  gemv->add_option("-o,--output", gf.output, "write the result to this .npy instead of printing it");
  gemv->add_option("--output-dtype", gf.output_dtype, "result dtype (bf16 results are saved as f32)")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}))
      ->capture_default_str();
  gemv->callback([&] { rc = RunGemv(g, gf); });

  std::string health_service;
  auto* health = app.add_subcommand("health", "grpc.health.v1 check; exit 0 when SERVING");
  health->add_option("--service", health_service, "service name (default: the whole server)");
  health->callback([&] { rc = RunHealth(g, health_service); });

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    absl::FPrintF(stderr, "error: INVALID_ARGUMENT: %s\n", e.what());
    absl::FPrintF(stderr, "run `plume --help` for usage\n");
    return kExitUsage;
  }
  return rc;
}
