# `nix develop`: the pinned toolchain, everything the checks need, the tools the justfile
# recipes call, and a local JetStream: entering the shell starts a nats-server in the background
# (scripts/devshell-nats.sh: 127.0.0.1:4222, data in .data/nats, NATS_URL exported), unless
# NATS_ES_DEVSHELL_NATS=0, NATS_URL points to another host, or something already answers on the
# port. It stops when the last such shell exits; the hook never waits for it.
{
  pkgs,
  common,
  checks,
}: let
  inherit (pkgs) lib;

  devshellNats = pkgs.writeShellApplication {
    name = "nats-es-devshell-nats";
    runtimeInputs = [pkgs.nats-server pkgs.coreutils pkgs.procps] ++ lib.optional pkgs.stdenv.isLinux pkgs.util-linux;
    text = builtins.readFile ../scripts/devshell-nats.sh;
  };
in
  common.craneLib.devShell {
    # the inputs of every check (cargo-nextest, cargo-deny, cargo-machete, nats-server, nginx, ...)
    inherit checks;

    packages = [
      pkgs.just
      pkgs.nats-server
      pkgs.natscli
      pkgs.nginx
      pkgs.cargo-nextest
      pkgs.cargo-deny
      pkgs.cargo-machete
      pkgs.alejandra
      pkgs.deadnix
      devshellNats
    ];

    shellHook = ''
      export NATS_URL=''${NATS_URL:-nats://127.0.0.1:4222}
      nats_es_root=$PWD
      while [ "$nats_es_root" != / ] && [ ! -f "$nats_es_root/flake.nix" ]; do nats_es_root=$(dirname "$nats_es_root"); done
      [ -f "$nats_es_root/flake.nix" ] || nats_es_root=$PWD
      NATS_ES_STATE=''${NATS_ES_STATE:-$nats_es_root/.data} nats-es-devshell-nats enter $$ || true
      unset nats_es_root
    '';
  }
