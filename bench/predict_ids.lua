-- wrk script for bench/serving.py's feedback scenario: POSTs the same /predict body as the
-- plain single-image scenario and appends each answer's prediction ids to a file, one a line,
-- for the benchmark's feedback sender to label (it tails the file).
--
--   wrk -t1 -c8 -d10s --latency -s bench/predict_ids.lua URL -- BODY_FILE IDS_FILE
--
-- No request() function: wrk keeps sending one static request, as with the plain script.

local ids_file

function init(args)
  local body = assert(io.open(args[1], "rb"))
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = body:read("*a")
  body:close()
  ids_file = assert(io.open(args[2], "ab"))
  -- unbuffered: each answer's ids are in the file as soon as it is read (closed at exit)
  ids_file:setvbuf("no")
end

function response(status, headers, body)
  if status ~= 200 then
    return -- wrk counts it among its non-2xx answers; the benchmark fails on those
  end
  local list = body:match('"prediction_ids"%s*:%s*%[(.-)%]')
  if list then
    local lines = {}
    for id in list:gmatch('"([^"]+)"') do
      lines[#lines + 1] = id .. "\n"
    end
    ids_file:write(table.concat(lines))
  end
end
