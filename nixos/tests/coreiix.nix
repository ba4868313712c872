# VM test of the NixOS module: a pool of two workers comes up behind coreiix.socket and
# answers through it; a switch to a configuration with three workers rolls the pool while a
# client keeps sending requests, and neither closes the socket nor refuses a connection.
{ pkgs, module }:
pkgs.testers.runNixOSTest {
  name = "coreiix";

  nodes.machine =
    { pkgs, ... }:
    {
      imports = [ module ];

      services.coreiix = {
        enable = true;
        profile = "small";
        openFirewall = true;
        environmentFile = "/run/coreiix-secrets.env";
        settings = {
          COREIIX_LOG = "info";
          COREIIX_DIAGNOSTICS = false;
        };
      };

      # A secret that never enters the store; tmpfiles writes it before the workers start.
      systemd.tmpfiles.rules = [ "f /run/coreiix-secrets.env 0600 root root - COREIIX_DRAIN_TIMEOUT=5" ];

      specialisation.three.configuration.services.coreiix.workers = 3;

      # Test VMs leave switch-to-configuration out unless asked.
      system.switch.enable = true;

      environment.systemPackages = [
        pkgs.curl
        # The client that runs during the switch: one request after another until
        # /run/coreiix-load.stop appears (bounded to 2 minutes and 3000 requests), one line
        # "<curl exit status> <HTTP status>" per request. Exit status 7 is a refused connection.
        (pkgs.writeShellApplication {
          name = "coreiix-load";
          runtimeInputs = [ pkgs.curl ];
          text = ''
            out=$1
            deadline=$((SECONDS + 120))
            n=0
            while [ ! -e /run/coreiix-load.stop ] && [ "$SECONDS" -lt "$deadline" ] && [ "$n" -lt 3000 ]; do
              rc=0
              code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 http://127.0.0.1:8000/healthz) || rc=$?
              echo "$rc $code" >>"$out"
              n=$((n + 1))
              sleep 0.02
            done
            touch "$out.done"
          '';
        })
      ];
    };

  testScript =
    { nodes, ... }:
    ''
      import json
      import re


      def show(unit: str, prop: str) -> str:
          return machine.succeed(f"systemctl show --property={prop} --value {unit}").strip()


      def workers() -> list[str]:
          out = machine.succeed(
              "systemctl list-units --plain --no-legend --state=active 'coreiix@*.service'"
              " | cut -d ' ' -f 1"
          )
          return sorted(out.split())


      def assert_pool(n: int) -> None:
          machine.wait_until_succeeds(
              "test $(systemctl list-units --plain --no-legend --state=active"
              f" 'coreiix@*.service' | wc -l) -eq {n}",
              timeout=60,
          )
          units = workers()
          assert units == [f"coreiix@{i}.service" for i in range(1, n + 1)], units
          for unit in units:
              # For a Type=notify unit, "active" means the worker has sent READY=1.
              assert show(unit, "ActiveState") == "active", unit
              assert show(unit, "SubState") == "running", unit
              status = show(unit, "StatusText")
              assert status != "", f"{unit} has sent no STATUS="
              print(f"{unit}: {status}")


      def get(path: str) -> dict:
          out = machine.succeed(
              f"curl -sS -w '\\n%{{http_code}}' http://127.0.0.1:8000{path}"
          )
          body, code = out.rsplit("\n", 1)
          assert code == "200", f"GET {path} answered {code}: {body}"
          return json.loads(body)


      def listener_inode() -> str:
          out = machine.succeed("ss -Hltne 'sport = :8000'")
          inodes = re.findall(r"ino:(\d+)", out)
          assert len(inodes) == 1, f"expected one listening socket on :8000, got: {out}"
          return inodes[0]


      def assert_answers(expected_workers: int) -> None:
          assert get("/healthz") == {"status": "ok"}
          # Requests land on any worker; every one must know the pool's size.
          for _ in range(30):
              info = get("/")
              assert info["profile"] == "small", info
              assert info["workers"] == expected_workers, info


      with subtest("two ready workers behind the socket"):
          machine.wait_for_unit("coreiix.socket")
          machine.wait_for_unit("coreiix.target")
          machine.wait_for_unit("coreiix-rollout.service")
          assert_pool(2)
          listen = show("coreiix.socket", "Listen")
          assert listen.endswith(":8000 (Stream)") and "\n" not in listen, listen
          assert_answers(2)

      with subtest("the module's configuration reaches the workers"):
          env = machine.succeed("cat /etc/coreiix/coreiix.env")
          assert "DEPLOYMENT_PROFILE=small\n" in env and "WORKERS=" not in env, env
          assert "COREIIX_DIAGNOSTICS=false\n" in env, env
          machine.succeed("coreiix-plan check")
          pid = show("coreiix@1.service", "MainPID")
          machine.succeed(f"tr '\\0' '\\n' < /proc/{pid}/environ | grep -qx COREIIX_DRAIN_TIMEOUT=5")
          assert "8000" in "${toString nodes.machine.networking.firewall.allowedTCPPorts}".split()

      with subtest("a switch to three workers keeps the socket and refuses nothing"):
          socket_invocation = show("coreiix.socket", "InvocationID")
          inode = listener_inode()
          refused = show("coreiix.socket", "NRefused")
          old_pids = {unit: show(unit, "MainPID") for unit in workers()}

          machine.succeed(
              "systemd-run --unit=coreiix-load --collect"
              " /run/current-system/sw/bin/coreiix-load /run/coreiix-load.log"
          )
          machine.wait_until_succeeds("test -s /run/coreiix-load.log")
          machine.succeed(
              "${nodes.machine.system.build.toplevel}/specialisation/three/bin/switch-to-configuration test"
          )
          assert_pool(3)
          machine.succeed("touch /run/coreiix-load.stop")
          machine.wait_until_succeeds("test -e /run/coreiix-load.log.done", timeout=60)

          results = machine.succeed("cat /run/coreiix-load.log").splitlines()
          failed = [line for line in results if line != "0 200"]
          print(f"{len(results)} requests during the switch, {len(failed)} failed")
          assert len(results) >= 10, results
          assert not failed, f"requests failed during the switch: {failed[:20]}"

          assert show("coreiix.socket", "InvocationID") == socket_invocation, "coreiix.socket was restarted"
          assert listener_inode() == inode, "the listening socket was replaced"
          assert show("coreiix.socket", "NRefused") == refused
          for unit, pid in old_pids.items():
              assert show(unit, "MainPID") != pid, f"{unit} was not restarted"
          assert "WORKERS=3\n" in machine.succeed("cat /etc/coreiix/coreiix.env")
          assert_answers(3)
    '';
}
