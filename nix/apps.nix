# `nix run`: the local stack through `just up`, with the Nix-built binaries.
# `nix run .#nats`: only a JetStream-enabled nats-server on port 4222.
# Both run in the current directory (the checkout) and keep their data under .data/.
{
  pkgs,
  binaries,
}: let
  inherit (pkgs) lib;

  app = drv: description: {
    type = "app";
    program = "${drv}/bin/${drv.name}";
    meta = {inherit description;};
  };

  up = pkgs.writeShellApplication {
    name = "nats-es-up";
    runtimeInputs = [pkgs.just pkgs.nats-server pkgs.nginx pkgs.curl pkgs.coreutils pkgs.python3 pkgs.util-linux];
    text = ''
      if [ ! -f justfile ]; then
        echo "nats-es-up: no justfile here; run \`nix run\` from the root of the nats-es checkout" >&2
        exit 1
      fi
      export AGGREGATE_BIN=${lib.getExe binaries.aggregate}
      export PROJECTION_BIN=${lib.getExe binaries.projection}
      exec just up "$@"
    '';
  };

  nats = pkgs.writeShellApplication {
    name = "nats-es-nats";
    runtimeInputs = [pkgs.nats-server pkgs.coreutils];
    text = ''
      mkdir -p .data/nats
      exec nats-server -js -sd .data/nats -a 127.0.0.1 -p 4222 "$@"
    '';
  };
in {
  default = app up "the local stack (nats-server, both services, the gateway) via `just up`";
  nats = app nats "a JetStream nats-server on 127.0.0.1:4222, data in .data/nats";
}
