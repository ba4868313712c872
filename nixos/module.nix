# services.coreiix: the package's own units (coreiix.socket, coreiix@.service, coreiix.target
# and the coreiix-generator) plus only what NixOS needs on top of them: [Install] replaced by
# wantedBy, the listen addresses, secrets, the env file, and a rollout that never closes the
# socket.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.coreiix;
  inherit (lib) mkOption types;

  # Written by the module from profile and workers; settings must not repeat them.
  reservedKeys = [
    "DEPLOYMENT_PROFILE"
    "WORKERS"
  ];

  # dotenvy (the env file's parser) reads these back verbatim without quotes; anything else is
  # single-quoted, which dotenvy takes literally (no escapes, no $ expansion).
  plainValue = value: builtins.match "[A-Za-z0-9_./:,@+=%-]*" value != null;
  renderValue =
    value:
    if lib.isBool value then
      lib.boolToString value
    else if lib.isInt value then
      toString value
    else if plainValue value then
      value
    else
      "'${value}'";

  envFile = pkgs.writeText "coreiix.env" (
    lib.concatLines (
      [
        "# Written by the NixOS module services.coreiix: change the NixOS configuration instead."
        "DEPLOYMENT_PROFILE=${cfg.profile}"
      ]
      ++ lib.optional (cfg.workers != null) "WORKERS=${toString cfg.workers}"
      ++ lib.mapAttrsToList (name: value: "${name}=${renderValue value}") cfg.settings
    )
  );

  # A ListenStream= value that is a socket path ("/run/coreiix.sock", "@abstract") or a vsock
  # address opens no TCP port; any other value must end in one: "8000", "0.0.0.0:8000",
  # "[::1]:8000".
  isTcpListen =
    value: !(lib.hasPrefix "/" value || lib.hasPrefix "@" value || lib.hasPrefix "vsock:" value);
  portOf =
    value:
    let
      match = builtins.match "(.*:)?([1-9][0-9]{0,4})" value;
      port = if match == null then null else lib.toIntBase10 (lib.last match);
    in
    if port != null && port <= 65535 then port else null;
  tcpListen = builtins.filter isTcpListen cfg.listen;
  unparseableListen = builtins.filter (value: portOf value == null) tcpListen;
  tcpPorts = lib.unique (builtins.filter (port: port != null) (map portOf tcpListen));

  settingNames = builtins.attrNames cfg.settings;
  reservedInSettings = builtins.filter (name: builtins.elem name reservedKeys) settingNames;
  badSettingNames = builtins.filter (
    name: builtins.match "[A-Za-z_][A-Za-z0-9_]*" name == null
  ) settingNames;
  unwritableSettings = builtins.filter (
    name:
    let
      value = cfg.settings.${name};
    in
    builtins.isString value && builtins.match "[^'\n]*" value == null
  ) settingNames;

  quoted = names: lib.concatMapStringsSep ", " (name: ''"${name}"'') names;
in
{
  options.services.coreiix = {
    enable = lib.mkEnableOption "Coreiix, a pool of HTTP workers sharing one socket-activated listening socket";

    package = lib.mkPackageOption pkgs "coreiix" { };

    profile = mkOption {
      type = types.enum [
        "dev"
        "small"
        "enterprise"
      ];
      default = "small";
      description = ''
        Deployment profile, written to the env file as `DEPLOYMENT_PROFILE`. It sizes the pool
        when {option}`services.coreiix.workers` is null: `dev` runs 1 worker, `small` 2, and
        `enterprise` CPUs × 2 + 1 (CPUs counted at boot, from affinity and cgroup quota).
      '';
    };

    workers = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      example = 4;
      description = ''
        Number of worker instances (`coreiix@1` … `coreiix@N`), 1 to 1024, written to the env
        file as `WORKERS`; null lets the profile decide. `coreiix-generator` turns it into the
        `Wants=` of `coreiix.target` at boot and at every daemon reload, so a switch applies it.

        On NixOS {file}`/etc/coreiix/coreiix.env` is a read-only link into the Nix store:
        `coreiix-plan apply --persist` detects that and refuses to edit it. Set this option to
        change the pool size for good; `coreiix-plan apply` without `--persist` only changes
        the running pool until the next switch or boot.
      '';
    };

    listen = mkOption {
      type = types.listOf types.str;
      default = [ "8000" ];
      example = [
        "127.0.0.1:8000"
        "/run/coreiix/http.sock"
      ];
      description = ''
        `ListenStream=` values of `coreiix.socket`, replacing the package's own. A port alone
        listens on all addresses, IPv4 and IPv6.

        A switch never restarts a socket (restarting it would refuse connections), so a change
        here takes effect at the next boot or after
        `systemctl restart coreiix.socket coreiix.target`, which restarts the workers too.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Whether to open the TCP ports of {option}`services.coreiix.listen` in the firewall.
        Socket paths open nothing; every other entry must end in a port.
      '';
    };

    environmentFile = mkOption {
      type = types.nullOr (
        types.pathWith {
          inStore = false;
          absolute = true;
        }
      );
      default = null;
      example = "/run/secrets/coreiix.env";
      description = ''
        File of `KEY=value` lines in systemd's `EnvironmentFile=` format, for secrets: it stays
        out of the Nix store and is read by systemd (as root) each time a worker starts. Its
        variables reach the workers' environment, which takes precedence over
        {file}`/etc/coreiix/coreiix.env`. Only the workers see it, not `coreiix-generator`, so
        it must not set `DEPLOYMENT_PROFILE` or `WORKERS`: the pool would be sized from one
        value and the workers would report another. The file is not watched: after changing
        it, run `systemctl restart coreiix-rollout` (a rolling restart).
      '';
    };

    settings = mkOption {
      type = types.attrsOf (
        types.oneOf [
          types.str
          types.int
          types.bool
        ]
      );
      default = { };
      example = {
        COREIIX_LOG = "info,coreiix::access=off";
        COREIIX_DRAIN_TIMEOUT = 10;
        COREIIX_DIAGNOSTICS = false;
      };
      description = ''
        Further variables for {file}`/etc/coreiix/coreiix.env` (see the project's
        `.env.example` for the list), written after `DEPLOYMENT_PROFILE` and `WORKERS`. The
        file is in the Nix store and readable by every user: put secrets in
        {option}`services.coreiix.environmentFile`. A change is rolled out to the workers one
        at a time on the next switch.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.listen != [ ];
        message = ''services.coreiix.listen is empty: give at least one ListenStream= value, e.g. [ "8000" ] or [ "127.0.0.1:8000" ].'';
      }
      {
        assertion = cfg.workers == null || cfg.workers >= 1 && cfg.workers <= 1024;
        message = "services.coreiix.workers = ${toString cfg.workers} is out of range: use 1 to 1024, or null to let services.coreiix.profile decide.";
      }
      {
        assertion = reservedInSettings == [ ];
        message = "services.coreiix.settings sets ${quoted reservedInSettings}: use services.coreiix.profile and services.coreiix.workers instead.";
      }
      {
        assertion = badSettingNames == [ ];
        message = "services.coreiix.settings: ${quoted badSettingNames} is not an environment variable name: use letters, digits and _, not starting with a digit (e.g. COREIIX_LOG).";
      }
      {
        assertion = unwritableSettings == [ ];
        message = "services.coreiix.settings: the value of ${quoted unwritableSettings} contains a newline or a single quote, which the env file cannot hold: set it through services.coreiix.environmentFile instead.";
      }
      {
        assertion = !cfg.openFirewall || unparseableListen == [ ];
        message = "services.coreiix.openFirewall: no TCP port in listen entries ${quoted unparseableListen}: write them as PORT, IPv4:PORT or [IPv6]:PORT, or set openFirewall = false and open the ports in networking.firewall yourself.";
      }
    ];

    # coreiix-plan (status, check, restart) for the administrator.
    environment.systemPackages = [ cfg.package ];

    environment.etc."coreiix/coreiix.env".source = envFile;

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall tcpPorts;

    # The package's units and generator, unchanged: the definitions below become drop-ins
    # (overrides.conf) of those units, they do not replace them.
    systemd.packages = [ cfg.package ];

    # NixOS ignores [Install]; these are the WantedBy= lines of the package's units.
    systemd.sockets.coreiix = {
      wantedBy = [ "sockets.target" ];
      # The empty value first clears the package's ListenStream=.
      socketConfig.ListenStream = [ "" ] ++ cfg.listen;
    };
    systemd.targets.coreiix.wantedBy = [ "multi-user.target" ];

    systemd.services."coreiix@" = {
      # By default a switch that changes a socket-activated service stops its socket too, and
      # the closed socket refuses connections until it is started again. So the switch leaves
      # the workers alone (switch-to-configuration lists them as "NOT restarting") and
      # coreiix-rollout restarts them. stopIfChanged = false keeps the socket up even if
      # restartIfChanged is turned back on.
      restartIfChanged = false;
      stopIfChanged = false;
      # toString: a path must not be copied into the store.
      serviceConfig.EnvironmentFile = lib.mkIf (cfg.environmentFile != null) (
        toString cfg.environmentFile
      );
    };

    # How a switch reaches the workers without ever closing coreiix.socket:
    #  1. activation updates /etc/coreiix/coreiix.env; switch-to-configuration reloads systemd,
    #     and the reload re-runs coreiix-generator, which re-plans coreiix.target's Wants=;
    #  2. this unit's restart triggers (package, env file, secrets path) changed, so the switch
    #     restarts it, and it runs the project's own pool commands: `coreiix-plan restart`
    #     restarts the running workers one at a time (each restart returns once the new worker
    #     has sent READY=1), then `coreiix-plan apply` starts the instances the new plan adds
    #     and drains and stops those it drops;
    #  3. the switch starts coreiix.target, which has nothing left to do.
    # Connections queue in the socket's backlog while a worker restarts; none is refused. If the
    # configuration is invalid or a restart fails, this unit fails, the switch reports it, and
    # the workers not yet restarted keep serving. `systemctl restart coreiix-rollout` does the
    # same rolling restart on demand (e.g. after editing the environmentFile).
    systemd.services.coreiix-rollout = {
      description = "Roll the Coreiix workers onto the current configuration";
      wantedBy = [ "multi-user.target" ];
      after = [ "coreiix.target" ];
      restartTriggers = [
        cfg.package
        envFile
        (toString cfg.environmentFile)
      ];
      # Restart after activation, in the new configuration, rather than stop before it.
      stopIfChanged = false;
      path = [
        cfg.package
        config.systemd.package
      ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
      };
      script = ''
        set -euo pipefail
        marker=/run/coreiix-rollout.done

        # The first run since boot (or since the module was enabled) follows a pool that was
        # just started from this very configuration: there is nothing to roll.
        if [ ! -e "$marker" ]; then
          touch "$marker"
          exit 0
        fi

        # An administrator who stopped the pool keeps it stopped.
        if ! systemctl is-active --quiet coreiix.target; then
          echo "coreiix-rollout: coreiix.target is not active, nothing to roll"
          exit 0
        fi

        coreiix-plan check
        coreiix-plan restart
        coreiix-plan apply
      '';
    };
  };
}
