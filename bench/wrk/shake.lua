-- POST /shake for many users, each request signed with that user's auth token.
-- Tokens come from a file, one hex token per line (`hongbao auth-token --count N`).
-- usage: wrk -s bench/wrk/shake.lua URL -- TOKENS_FILE [PIPELINE_DEPTH]
-- Requests are formatted once in init (1024 batches of DEPTH requests, rotating through the
-- users), so the client spends its time on the network, not in Lua.

local batches = {}
local next_batch = 0

function init(args)
  local path = args[1] or "tokens.txt"
  local depth = tonumber(args[2] or "1")
  local tokens = {}
  for line in io.lines(path) do
    tokens[#tokens + 1] = line
  end
  if #tokens == 0 then
    error("no tokens in " .. path)
  end
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
  local t = math.random(#tokens)
  for b = 1, 1024 do
    local parts = {}
    for d = 1, depth do
      t = t % #tokens + 1
      parts[d] = wrk.format("POST", "/shake",
        { ["Authorization"] = "Bearer " .. tokens[t], ["Content-Length"] = "0" })
    end
    batches[b] = table.concat(parts)
  end
end

function request()
  next_batch = next_batch % #batches + 1
  return batches[next_batch]
end
