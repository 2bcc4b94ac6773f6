-- Calls auth_password_verify N times in one Lua state, with a full garbage
-- collection after each call as Dovecot's db-lua.c does, and prints the
-- Lua process's CPU time per call in microseconds (BenchmarkScript).
--
--   lua5.4 bench.lua SCRIPT N
dovecot = {auth = {PASSDB_RESULT_INTERNAL_FAILURE = -1, PASSDB_RESULT_SCHEME_NOT_AVAILABLE = -2,
  PASSDB_RESULT_USER_UNKNOWN = -3, PASSDB_RESULT_PASSWORD_MISMATCH = 0, PASSDB_RESULT_OK = 1,
  USERDB_RESULT_INTERNAL_FAILURE = -1, USERDB_RESULT_USER_UNKNOWN = -2, USERDB_RESULT_OK = 1}}
dofile(arg[1])
assert(script_init(nil) == 0)
local req = {user = "ok", service = "imap", remote_ip = "192.0.2.7"}
local n = tonumber(arg[2])
local t0 = os.clock()
for _ = 1, n do
  assert(auth_password_verify(req, "pw") == 1)
  if os.getenv("BENCH_NO_GC") == nil then collectgarbage("collect") end
end
print(string.format("%.2f", (os.clock() - t0) * 1e6 / n))
