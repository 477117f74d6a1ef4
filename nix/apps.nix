# `nix run`: the local stack (nats-server, both services, the gateway), started like `just up`
# with the Nix-built binaries; `nix run .#inventory`: the same with the inventory example's
# services beside account (`INVENTORY=1 just up`). `nix run .#stack -- <command>`: any other
# command of the stack script (down, status, logs, token [T...], kill NAME, start NAME,
# cluster-up). `nix run .#nats`: only a JetStream-enabled nats-server on 127.0.0.1:4222.
#
# They work from any directory (e.g. `nix run github:<owner>/<repo>`): the stack script, the
# gateway template, the console and the token tool come from the derivation, not from the
# current directory.
# Data go to ./.data inside a checkout (a directory with flake.nix and scripts/stack.sh, here or
# above), else to $XDG_STATE_HOME/nats-es (~/.local/state/nats-es); STACK_DIR overrides both.
{
  pkgs,
  binaries,
}: let
  inherit (pkgs) lib;

  # the files the stack script reads, laid out as in the repository
  stackFiles = pkgs.runCommand "nats-es-stack-files" {} ''
    mkdir -p $out/share/nats-es/scripts $out/share/nats-es/gateway
    cp ${../scripts/stack.sh} $out/share/nats-es/scripts/stack.sh
    cp ${../scripts/token.py} $out/share/nats-es/scripts/token.py
    cp ${../gateway/nginx.conf.template} $out/share/nats-es/gateway/nginx.conf.template
    cp ${../gateway/headers.conf} $out/share/nats-es/gateway/headers.conf
    cp -R ${../gateway/console} $out/share/nats-es/gateway/console
    chmod +x $out/share/nats-es/scripts/stack.sh
  '';

  # STACK_DIR: given, else .data of the checkout we are in, else the XDG state directory
  stateDir = ''
    if [ -z "''${STACK_DIR:-}" ]; then
      dir=$PWD
      while [ "$dir" != / ] && { [ ! -f "$dir/flake.nix" ] || [ ! -f "$dir/scripts/stack.sh" ]; }; do
        dir=$(dirname "$dir")
      done
      if [ -f "$dir/flake.nix" ] && [ -f "$dir/scripts/stack.sh" ]; then
        STACK_DIR=$dir/.data
      else
        STACK_DIR=''${XDG_STATE_HOME:-$HOME/.local/state}/nats-es
      fi
    fi
    export STACK_DIR
    mkdir -p "$STACK_DIR"
  '';

  # `env`: more of the stack script's environment (exports)
  stack = name: env: command:
    pkgs.writeShellApplication {
      inherit name;
      runtimeInputs = [pkgs.nats-server pkgs.nginx pkgs.curl pkgs.coreutils pkgs.procps pkgs.python3];
      text = ''
        ${stateDir}
        export AGGREGATE_BIN=${lib.getExe binaries.aggregate}
        export PROJECTION_BIN=${lib.getExe binaries.projection}
        ${env}
        exec ${stackFiles}/share/nats-es/scripts/stack.sh ${command}
      '';
    };

  app = drv: description: {
    type = "app";
    program = "${drv}/bin/${drv.name}";
    meta = {inherit description;};
  };
in {
  default = app (stack "nats-es-up" "" ''up "$@"'') "the local stack (nats-server, both services, the gateway), from any directory";
  # the inventory example's binaries are built only for this one
  inventory =
    app (stack "nats-es-up-inventory" ''
      export INVENTORY=1
      export INVENTORY_AGGREGATE_BIN=${lib.getExe binaries.inventory-aggregate}
      export INVENTORY_PROJECTION_BIN=${lib.getExe binaries.inventory-projection}
    '' ''up "$@"'')
    "the local stack with the inventory example's services beside account (INVENTORY=1)";
  stack = app (stack "nats-es-stack" "" ''"$@"'') "the stack script: down, status, logs, token [T...], kill NAME, start NAME, cluster-up";
  nats = app (stack "nats-es-nats" "" ''nats "$@"'') "a JetStream nats-server on 127.0.0.1:4222 in the foreground";
}
