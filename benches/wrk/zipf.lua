-- Keys drawn from a Zipf distribution (exponent ZIPF_S, default 0.9) over
-- ZIPF_KEYS keys (default 100000): the path given to wrk with
-- `&k=<rank>` appended (the path must already carry a query). Each
-- thread builds the cumulative table once and draws by binary search.
local n = tonumber(os.getenv("ZIPF_KEYS") or "100000")
local s = tonumber(os.getenv("ZIPF_S") or "0.9")
local cdf = {}

function init(args)
    local total = 0
    for k = 1, n do
        total = total + 1 / (k ^ s)
        cdf[k] = total
    end
    for k = 1, n do
        cdf[k] = cdf[k] / total
    end
    math.randomseed(os.time() + (id or 0))
    prefix = wrk.path .. "&k="
end

local threads = 0
function setup(thread)
    threads = threads + 1
    thread:set("id", threads)
end

function request()
    local u = math.random()
    local lo, hi = 1, n
    while lo < hi do
        local mid = math.floor((lo + hi) / 2)
        if cdf[mid] < u then lo = mid + 1 else hi = mid end
    end
    return wrk.format("GET", prefix .. lo)
end
